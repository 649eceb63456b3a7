package syncbuf

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestConcurrentWriteAndRead(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 100 {
				fmt.Fprintf(&b, "w%d %d\n", i, j)
			}
		})
		wg.Go(func() {
			for range 100 {
				_ = b.String()
				_ = b.Len()
			}
		})
	}
	wg.Wait()
	if n := strings.Count(b.String(), "\n"); n != 400 {
		t.Fatalf("%d lines, want 400", n)
	}
	if b.Len() != len(b.String()) {
		t.Fatalf("Len %d, String has %d bytes", b.Len(), len(b.String()))
	}
}
