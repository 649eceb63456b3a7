package e2e

import (
	"fmt"
	"os"
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
// it until release(p) (any line on its stdin) or the end of the test.
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

// probe tries an O_NONBLOCK open of path in mode (w or r) with the Go client
// and closes it at once; it returns "granted" or the errno name.
func probe(t *testing.T, e *harness.Env, path, mode string) string {
	t.Helper()
	p := e.GoClient(t, "-nonblock", "-mode", mode, path)
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
	require.Equal(t, "EAGAIN", probe(t, e, path, "w"), "O_NONBLOCK exclusive open of %s while it should be held", path)
}

// waitFree polls until an O_NONBLOCK exclusive open of path succeeds
// (release is asynchronous: it follows close(2) by a little).
func waitFree(t *testing.T, e *harness.Env, path string) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got := probe(t, e, path, "w")
		return got == "granted", fmt.Sprintf("%s still not free (O_NONBLOCK open: %s)", path, got)
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
