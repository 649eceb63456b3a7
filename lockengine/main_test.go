package lockengine

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when goroutines outlive them: a
// Queue's workers, handoffs and Close must leave nothing running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
