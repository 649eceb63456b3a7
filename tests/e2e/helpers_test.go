package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// patience is harness.Patience: the deadline for anything that should
// happen promptly.
const patience = harness.Patience

// shellHold starts a bash that opens M/name with redirection redir
// (">", ">>", "<>" or "<") on fd 9, waits until it is granted, and keeps
// it until release(p) (any line on its stdin) or the end of the test. A
// "<" open of M/NAME takes nothing: shared holders open sharedPath(path).
func shellHold(t *testing.T, e *harness.Env, path, redir string) *harness.Proc {
	t.Helper()
	p := shellWaiter(t, e, path, redir)
	p.WaitLine("granted", patience)
	return p
}

// shellWaiter starts the same bash as shellHold without waiting for the
// grant.
func shellWaiter(t *testing.T, e *harness.Env, path, redir string) *harness.Proc {
	t.Helper()
	return e.Bash(t, `exec 9`+redir+`"$P" || exit 1; echo granted; read _; exec 9>&-; echo closed`, "P="+path)
}

// shellRelease makes a shellHold bash close its descriptor.
func shellRelease(t *testing.T, p *harness.Proc) {
	t.Helper()
	p.Send("release")
	p.WaitLine("closed", patience)
}

// viewPath returns path, the file of a lock name directly under a mount
// (M/NAME), under the reserved directory view of that mount (M/VIEW/NAME).
// A path already under a reserved directory (M/.try/NAME,
// M/.timeout/SECS/NAME, M/.shared/NAME, M/.flock/NAME) is returned as it is.
func viewPath(path, view string) string {
	dir, name := filepath.Split(path)
	dir = filepath.Clean(dir)
	switch filepath.Base(dir) {
	case ".try", ".shared", ".flock", ".timeout":
		return path
	}
	if filepath.Base(filepath.Dir(dir)) == ".timeout" {
		return path
	}
	return filepath.Join(dir, view, name)
}

// tryPath is M/.try/NAME for M/NAME: its open takes the lock in the open's
// mode (read-only: shared) or fails with EAGAIN at once. (An O_NONBLOCK or
// read-only open of M/NAME itself takes nothing.)
func tryPath(path string) string { return viewPath(path, ".try") }

// sharedPath is M/.shared/NAME for M/NAME: its open waits for the shared
// lock, whatever the access mode (exec 9<M/.shared/NAME).
func sharedPath(path string) string { return viewPath(path, ".shared") }

// flockPath is M/.flock/NAME for M/NAME: its open never takes anything;
// only lock calls (flock, fcntl, lockf) on the descriptor do.
func flockPath(path string) string { return viewPath(path, ".flock") }

// probe tries a lock of path's name without waiting: an O_NONBLOCK open of
// M/.try/NAME (see tryPath) in mode (w: exclusive, r: shared) with the Go
// client, closed at once. It returns "granted" or the errno name.
func probe(t *testing.T, e *harness.Env, path, mode string) string {
	t.Helper()
	p := e.GoClient(t, "-nonblock", "-mode", mode, tryPath(path))
	p.CloseStdin()
	p.WaitLine("start", patience)
	f := strings.Fields(p.NextLine(patience))
	p.Wait(patience)
	switch {
	case len(f) >= 1 && f[0] == "granted":
		return "granted"
	case len(f) >= 2 && f[0] == "error":
		return f[1]
	}
	t.Fatalf("probe %s: unexpected output %q", path, f)
	return ""
}

// requireHeld asserts that path is locked against an exclusive open now.
func requireHeld(t *testing.T, e *harness.Env, path string) {
	t.Helper()
	require.Equal(t, "EAGAIN", probe(t, e, path, "w"), "exclusive try of %s while it should be held", path)
}

// waitFree polls until an exclusive try (probe) of path succeeds
// (release is asynchronous: it follows close(2) by a little), then until
// the lease of that successful try is gone as well (its release is just as
// asynchronous), so that path is free, for a try too, when it returns.
func waitFree(t *testing.T, e *harness.Env, path string) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got := probe(t, e, path, "w")
		return got == "granted", fmt.Sprintf("%s still not free (exclusive try: %s)", path, got)
	})
	waitHolders(t, path, 0)
}

// waitLostClosed polls until path's user.lockfs.holders (as the daemon of
// path's mount lists them) shows no lost lease: a lost lease is listed
// until its holder's descriptor is released, at the RELEASE that follows
// close(2) by a little.
func waitLostClosed(t *testing.T, path string) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		v := lockXattr(t, path, "user.lockfs.holders")
		return !strings.Contains(v, " lost\n"), fmt.Sprintf("%s still lists a lost lease: %q", path, v)
	})
}

// requireBlocked asserts that a waiter has not been granted and still
// sleeps in open(2).
func requireBlocked(t *testing.T, p *harness.Proc) {
	t.Helper()
	require.False(t, p.HasLine("granted"), "%s was granted but should still wait", p.Name)
	ok, state := harness.BlockedInOpen(p.Pid())
	require.True(t, ok, "%s should be blocked in open: %s", p.Name, state)
}

// stayBlocked asserts that p is not granted during d (checking all along).
func stayBlocked(t *testing.T, p *harness.Proc, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		require.False(t, p.HasLine("granted"), "%s was granted but should still wait", p.Name)
		require.False(t, p.Exited(), "%s exited but should still wait: %s %s", p.Name, p.Stdout(), p.Stderr())
		time.Sleep(20 * time.Millisecond)
	}
	requireBlocked(t, p)
}

// listNames returns the names in dir, without dot entries (.try, .timeout),
// sorted, and the dot entries separately.
func listNames(t *testing.T, dir string) (names, dots []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".") {
			dots = append(dots, de.Name())
			continue
		}
		names = append(names, de.Name())
	}
	slices.Sort(names)
	return names, dots
}

// ms formats nanoseconds as milliseconds for logs.
func ms(ns int64) string { return fmt.Sprintf("%.3fms", float64(ns)/1e6) }
