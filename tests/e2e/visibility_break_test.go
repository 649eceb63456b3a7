package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// rm M/x by root breaks the lock: the holder's descriptor fails with EIO,
// the state shows lost (once the lock-delay is over) with the cause, the
// break is logged with who did it, and a waiter is granted only after the
// lock-delay, with a greater token.
func TestBreakByRoot(t *testing.T) {
	e := setup(t)
	const delay = 500 * time.Millisecond
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--lock-delay", delay.String()}})
	x := d.Path("x")
	h := e.Hold(t, x, "rw")
	require.Equal(t, "ok", harness.Command(t, h, "read"))
	oldTok, err := strconv.ParseUint(lockXattr(t, x, "user.lockfs.token"), 10, 64)
	require.NoError(t, err)

	require.NoError(t, os.Remove(x), "rm by root")
	for _, c := range []string{"read", "write", "fsync"} {
		assert.Equal(t, "EIO", harness.Command(t, h, c), "%s on a broken lock's descriptor", c)
	}
	d.WaitLog(patience, `msg="lock broken"`, "lock=x", "uid=0")
	harness.Eventually(t, patience, func() (bool, string) {
		st := lockXattr(t, x, "user.lockfs.state")
		return st == "lost", "state " + st
	})
	assert.Contains(t, lockXattr(t, x, "user.lockfs.cause"), "broken")
	assert.Contains(t, lockXattr(t, x, "user.lockfs.holders"), " lost\n")
	harness.Release(t, h)

	// A waiter proceeds only after the lock-delay.
	y := d.Path("y")
	h2 := e.Hold(t, y, "w")
	w := e.Waiter(t, y, "w")
	before := harness.Mono()
	require.NoError(t, os.Remove(y))
	granted := harness.Granted(t, w, patience)
	assert.GreaterOrEqual(t, time.Duration(granted-before), delay,
		"the waiter was granted %s after the break, before the lock-delay", ms(granted-before))
	assert.Equal(t, "EIO", harness.Command(t, h2, "write"))
	newTok, err := strconv.ParseUint(lockXattr(t, y, "user.lockfs.token"), 10, 64)
	require.NoError(t, err)
	assert.Greater(t, newTok, oldTok)
	harness.Release(t, w)
	harness.Release(t, h2)

	// Nothing held: ENOENT.
	waitFree(t, e, y)
	assert.ErrorIs(t, os.Remove(d.Path("nobody-holds-this")), unix.ENOENT)
}

// Breaking needs root or the owner of every lease: nobody cannot break root's lock
// (rm and lockfs break get EPERM, the lock stays), but can break its own.
func TestBreakPermission(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--lock-delay", "100ms"}})
	traversableTo(t, e, d.Mountpoint)
	traversableTo(t, e, e.Lockfs)
	root := e.Hold(t, d.Path("rootlock"), "w")

	rm := asNobody(t, "rm", "rm", "-f", d.Path("rootlock"))
	assert.NotEqual(t, 0, rm.Wait(patience), "rm of root's lock by nobody")
	assert.Contains(t, rm.Stderr(), "Operation not permitted")
	br := asNobody(t, "lockfs break", e.Lockfs, "break", "--mount", d.Mountpoint, "rootlock")
	assert.Equal(t, 1, br.Wait(patience), "lockfs break by nobody")
	assert.Contains(t, br.Stderr(), "operation not permitted")
	assert.Equal(t, "ok", harness.Command(t, root, "write"), "the lock survives")
	requireHeld(t, e, d.Path("rootlock"))
	d.WaitLog(patience, `msg="lock break refused"`, "lock=rootlock", "uid=65534")

	own, _ := tokenHolder(t, e, d.Path("mine"), true)
	br = asNobody(t, "lockfs break", e.Lockfs, "break", "--mount", d.Mountpoint, "mine")
	assert.Equal(t, 0, br.Wait(patience), "lockfs break of its own lock: %s", br.Stderr())
	d.WaitLog(patience, `msg="lock broken"`, "lock=mine", "uid=65534")
	own.Send("release")
	own.WaitLine("closed", patience)

	nb := lockfsCmd(t, e, "break", "--mount", d.Mountpoint, "not-held")
	assert.Equal(t, 1, nb.Wait(patience))
	assert.True(t, strings.Contains(nb.Stderr(), "not held"), nb.Stderr())
	harness.Release(t, root)
}
