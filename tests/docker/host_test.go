package docker

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hostTimeout bounds one file operation of the test process on a lockfs
// mount served from a container.
const hostTimeout = 30 * time.Second

// withTimeout runs op in a goroutine and fails t if it does not return in
// time (a hung FUSE request must not hang the whole package).
func withTimeout[T any](t testing.TB, what string, op func() (T, error)) (T, error) {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := op()
		ch <- res{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(hostTimeout):
		t.Fatalf("%s: no answer after %v", what, hostTimeout)
		panic("unreachable")
	}
}

// hostTry opens path (M/.try/NAME) from the host for writing and closes it.
// It returns true if the open succeeded and false on EAGAIN; other errors
// fail t.
func hostTry(t testing.TB, path string) bool {
	t.Helper()
	f, err := withTimeout(t, "open "+path, func() (*os.File, error) { return os.OpenFile(path, os.O_WRONLY, 0) })
	if errors.Is(err, syscall.EAGAIN) {
		return false
	}
	require.NoError(t, err, "host open %s", path)
	require.NoError(t, f.Close())
	return true
}

// hostOpen opens path from the host for writing (an exclusive lock), which
// must be granted in time; the file is closed when t ends if still open.
func hostOpen(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := withTimeout(t, "open "+path, func() (*os.File, error) { return os.OpenFile(path, os.O_WRONLY, 0) })
	require.NoError(t, err, "host open %s", path)
	t.Cleanup(func() { f.Close() })
	return f
}

// hostList lists the names held or waited on, as the host sees them.
func hostList(t testing.TB, dir string) []string {
	t.Helper()
	names, err := withTimeout(t, "list "+dir, func() ([]string, error) {
		ents, err := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names, err
	})
	require.NoError(t, err, "host ls %s", dir)
	return names
}

// hostSh runs a bash script on the host.
func hostSh(ctx context.Context, script string) result { return runCmd(ctx, "bash", "-c", script) }

// uptime returns the kernel's uptime, the clock shared by the host and the
// containers (busybox has no sub-second date).
func uptime(t testing.TB) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	require.NoError(t, err)
	up, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	require.NoError(t, err)
	return up
}
