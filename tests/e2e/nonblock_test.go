package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// pyTry runs the Python client with O_NONBLOCK and returns "granted" or the
// errno name, and how long the open took; the descriptor is closed at once.
func pyTry(t *testing.T, e *harness.Env, path, mode string, extra ...string) (string, time.Duration) {
	t.Helper()
	p := e.PyClient(t, append(append([]string{"--mode", mode}, extra...), path)...)
	p.CloseStdin()
	p.WaitLine("start", patience)
	f := strings.Fields(p.NextLine(patience))
	p.Wait(patience)
	require.GreaterOrEqual(t, len(f), 3, "pyclient output %q", f)
	elapsed, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	require.NoError(t, err)
	if f[0] == "granted" {
		return "granted", time.Duration(elapsed)
	}
	require.Equal(t, "error", f[0], "pyclient output %q", f)
	return f[1], time.Duration(elapsed)
}

// An O_NONBLOCK open of M/NAME takes nothing, whatever its mode (flock(1),
// setlock and chpst open that way and then call flock(2)), so it succeeds
// while the name is held and leaves it held. On the views whose open takes
// a lock (.try, .shared, .timeout/SECS), O_NONBLOCK makes the open a try:
// EAGAIN at once when the lock is held in a conflicting mode, granted when
// it is free or compatible.
func TestNonblockEAGAIN(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("nb")

	got, _ := pyTry(t, e, tryPath(path), "w", "--nonblock")
	require.Equal(t, "granted", got, "O_NONBLOCK open of .try/NAME, free")
	waitFree(t, e, path)

	h := e.Hold(t, path, "w")
	for _, mode := range []string{"w", "rw", "a", "r"} {
		got, _ := pyTry(t, e, path, mode, "--nonblock")
		assert.Equal(t, "granted", got, "O_NONBLOCK open of M/NAME, mode %s, takes nothing", mode)
		requireHeld(t, e, path)
	}
	for _, p := range []string{tryPath(path), d.Mountpoint + "/.timeout/30/nb"} {
		for _, mode := range []string{"w", "rw", "a", "r"} {
			got, took := pyTry(t, e, p, mode, "--nonblock")
			assert.Equal(t, "EAGAIN", got, "O_NONBLOCK open of %s, mode %s, while held exclusively", p, mode)
			t.Logf("O_NONBLOCK %s mode %s: EAGAIN after %v", p, mode, took)
			assert.Less(t, took, 5*time.Second, "EAGAIN should come at once")
		}
	}
	got, took := pyTry(t, e, sharedPath(path), "r", "--nonblock")
	assert.Equal(t, "EAGAIN", got, "O_NONBLOCK open of .shared/NAME while held exclusively")
	assert.Less(t, took, 5*time.Second, "EAGAIN should come at once")
	harness.Release(t, h)
	waitFree(t, e, path)

	r := e.Hold(t, sharedPath(path), "r")
	for _, p := range []string{tryPath(path), sharedPath(path)} {
		got, _ = pyTry(t, e, p, "r", "--nonblock")
		assert.Equal(t, "granted", got, "O_NONBLOCK reader of %s while shared", p)
	}
	got, _ = pyTry(t, e, tryPath(path), "w", "--nonblock")
	assert.Equal(t, "EAGAIN", got, "O_NONBLOCK writer of .try/NAME while shared")
	harness.Release(t, r)
}

// M/.try/NAME is the shell's O_NONBLOCK: it fails with "Resource
// temporarily unavailable" when held, and otherwise locks M/NAME itself.
func TestTryPath(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("t")

	h := e.Hold(t, path, "w")
	for _, redir := range []string{">", "<", ">>", "<>"} {
		p := e.Bash(t, `exec 9`+redir+`"$M/.try/t"`, "M="+d.Mountpoint)
		assert.NotEqual(t, 0, p.Wait(patience), "exec 9%s.try/t while held", redir)
		assert.Contains(t, p.Stderr(), "Resource temporarily unavailable", "exec 9%s.try/t while held", redir)
	}
	p := e.Sh(t, `exec 9>"$M/.try/t"`, "M="+d.Mountpoint)
	assert.NotEqual(t, 0, p.Wait(patience), "busybox: exec 9>.try/t while held")
	assert.Contains(t, p.Stderr(), "Resource temporarily unavailable", "busybox stderr")
	harness.Release(t, h)
	waitFree(t, e, path)

	// Granted through .try, it is the same lock as M/t.
	tr := shellHold(t, e, d.Mountpoint+"/.try/t", ">")
	requireHeld(t, e, path)
	w := e.Waiter(t, sharedPath(path), "r")
	shellRelease(t, tr)
	harness.Granted(t, w, patience)
	// Shared through .try alongside a shared holder.
	r := shellHold(t, e, d.Mountpoint+"/.try/t", "<")
	shellRelease(t, r)
}

// M/.timeout/SECS/NAME waits at most SECS, then fails with EAGAIN; it
// succeeds when the lock is freed in time; .timeout/0/NAME is .try/NAME.
func TestTimeoutPath(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	m := d.Mountpoint

	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		e.Hold(t, d.Path("exp"), "w")
		for _, c := range []struct {
			secs string
			want time.Duration
		}{{"0.5", 500 * time.Millisecond}, {"500ms", 500 * time.Millisecond}, {"1", time.Second}} {
			got, took := pyTry(t, e, m+"/.timeout/"+c.secs+"/exp", "w")
			assert.Equal(t, "EAGAIN", got, ".timeout/%s while held", c.secs)
			t.Logf(".timeout/%s expired after %v", c.secs, took)
			assert.GreaterOrEqual(t, took, c.want-50*time.Millisecond, ".timeout/%s expired early", c.secs)
			assert.Less(t, took, c.want+10*time.Second, ".timeout/%s expired late", c.secs)
		}
		got, took := pyTry(t, e, m+"/.timeout/0/exp", "r")
		assert.Equal(t, "EAGAIN", got, ".timeout/0 while held")
		assert.Less(t, took, 5*time.Second, ".timeout/0 should not wait")

		p := e.Bash(t, `exec 9>"$M/.timeout/0.3/exp"`, "M="+m)
		assert.NotEqual(t, 0, p.Wait(patience), "bash exec 9>.timeout/0.3 while held")
		assert.Contains(t, p.Stderr(), "Resource temporarily unavailable")
	})

	t.Run("freed in time", func(t *testing.T) {
		t.Parallel()
		h := e.Hold(t, d.Path("ok"), "w")
		w := e.PyClient(t, "--mode", "w", m+"/.timeout/30/ok")
		w.WaitBlockedInOpen(patience)
		released := harness.Release(t, h)
		granted := harness.Granted(t, w, patience)
		t.Logf(".timeout waiter granted %s after the release", ms(granted-released))
		requireHeld(t, e, d.Path("ok")) // the same lock as M/ok

		s := e.Sh(t, `exec 9>"$M/.timeout/30/ok" && echo granted`, "M="+m)
		s.WaitBlockedInOpen(patience)
		harness.Release(t, w)
		s.WaitLine("granted", patience)
	})
}
