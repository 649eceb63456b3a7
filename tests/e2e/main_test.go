package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// env is what TestMain built and found; read-only during the tests.
var env *harness.Env

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	e, err := harness.Setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: lockfs e2e setup:", err)
		if e != nil {
			_ = e.Teardown()
		}
		return 1
	}
	env = e
	code := m.Run()
	// The package-level guard: no fuse.lockfs mount may outlive the tests.
	if err := e.Teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: lockfs e2e teardown:", err)
		code = 1
	}
	return code
}

// setup is the first call of every test: it skips when prerequisites are
// missing (see harness.RequiredEnv) and runs the test in parallel with the
// others (each test has its own mountpoints and state directories).
func setup(t *testing.T) *harness.Env {
	t.Helper()
	env.Require(t)
	t.Parallel()
	return env
}
