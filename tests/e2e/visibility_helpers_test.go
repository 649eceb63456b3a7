package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// nobodyID is the unprivileged uid/gid the visibility tests run clients as.
const nobodyID = "65534"

// traversableTo makes every directory from the run's root down to path's
// parent searchable by others (t.TempDir and the run root are 0700), so
// that a client running as nobody can reach a mountpoint (or binary) below
// them.
func traversableTo(t *testing.T, e *harness.Env, path string) {
	t.Helper()
	for p := filepath.Dir(path); strings.HasPrefix(p, e.Root); p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(p, fi.Mode().Perm()|0o055))
		if p == e.Root {
			break
		}
	}
}

// setprivPath finds setpriv (util-linux, essential on Debian).
func setprivPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("setpriv")
	require.NoError(t, err, "setpriv (util-linux) is needed to run clients as nobody")
	return p
}

// asNobody starts argv as uid/gid 65534 (through setpriv), in its own
// process group like every harness process.
func asNobody(t *testing.T, name string, argv ...string) *harness.Proc {
	t.Helper()
	args := append([]string{"--reuid", nobodyID, "--regid", nobodyID, "--clear-groups", "--"}, argv...)
	return harness.Start(t, harness.ProcOptions{Name: name, Path: setprivPath(t), Args: args})
}

// tokenHolder starts a bash (as nobody when unpriv) that opens path with
// "<>" on fd 9, reads its token with `read -r tok <&9` and prints
// "granted TOKEN PID". It keeps the lock until a line on stdin.
func tokenHolder(t *testing.T, e *harness.Env, path string, unpriv bool) (p *harness.Proc, token string) {
	t.Helper()
	script := `exec 9<>"$1" || exit 1; read -r tok <&9 || exit 2; echo "granted $tok $$"; read _; exec 9>&-; echo closed`
	if unpriv {
		p = asNobody(t, "bash holder", e.BashPath, "-c", script, "bash", path)
	} else {
		p = harness.Start(t, harness.ProcOptions{Name: "bash holder", Path: e.BashPath, Args: []string{"-c", script, "bash", path}})
	}
	f := p.WaitLine("granted", patience)
	require.Len(t, f, 2, "granted line: %v", f)
	return p, f[0]
}

// withTimeout runs fn in a goroutine and fails t if it does not return
// within d: inspection must never wait for a lock.
func withTimeout[T any](t *testing.T, d time.Duration, what string, fn func() (T, error)) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := fn()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		require.NoError(t, r.err, what)
		return r.v
	case <-time.After(d):
		t.Fatalf("%s did not return within %v: it blocks on the lock", what, d)
	}
	var zero T
	return zero
}

// lockXattr reads the extended attribute attr of path (without following a
// symlink), within patience.
func lockXattr(t *testing.T, path, attr string) string {
	t.Helper()
	return withTimeout(t, patience, "getxattr "+attr, func() (string, error) {
		buf := make([]byte, 4096)
		n, err := unix.Lgetxattr(path, attr, buf)
		if errors.Is(err, unix.ENODATA) {
			return "", fmt.Errorf("%s: no attribute %s: %w", path, attr, err)
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	})
}

// lockfsCmd runs the lockfs binary with args and returns the process after
// it exited.
func lockfsCmd(t *testing.T, e *harness.Env, args ...string) *harness.Proc {
	t.Helper()
	p := harness.Start(t, harness.ProcOptions{Name: "lockfs " + args[0], Path: e.Lockfs, Args: args})
	p.Wait(patience)
	return p
}
