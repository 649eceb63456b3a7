package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// daemonPair starts two daemons on two mountpoints sharing one state dir.
func daemonPair(t *testing.T, e *harness.Env, c harness.DaemonConfig) (a, b *harness.Daemon) {
	t.Helper()
	if c.StateDir == "" {
		c.StateDir = t.TempDir()
	}
	return e.StartDaemon(t, c), e.StartDaemon(t, c)
}

// Two daemons sharing a state dir exclude each other, hand over to each
// other's waiters, share shared locks, and list the names they wait on.
func TestTwoDaemonsExclude(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{})

	h := e.Hold(t, a.Path("x"), "w")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "w"), "exclusive on B while A holds")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "r"), "shared on B while A holds")
	w := e.Waiter(t, b.Path("x"), "w")

	// B only waits on x: its ls lists it.
	names, _ := listNames(t, b.Mountpoint)
	assert.Equal(t, []string{"x"}, names, "ls of the waiting daemon's mount")

	released := harness.Release(t, h)
	granted := harness.Granted(t, w, patience)
	t.Logf("cross-daemon handoff: %s", ms(granted-released))
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "r"), "shared on A while B holds")
	harness.Release(t, w)
	waitFree(t, e, a.Path("x"))

	// Shared holders through different daemons share the lock.
	r := e.Hold(t, sharedPath(a.Path("s")), "r")
	assert.Equal(t, "granted", probe(t, e, b.Path("s"), "r"), "shared on B while A holds shared")
	rb := e.Hold(t, sharedPath(b.Path("s")), "r")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("s"), "w"))
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("s"), "w"))
	wa := e.Waiter(t, a.Path("s"), "w")
	harness.Release(t, r)
	stayBlocked(t, wa, 300*time.Millisecond) // rb on B still holds
	harness.Release(t, rb)
	harness.Granted(t, wa, patience)
}

// SIGKILL of the daemon holding a name frees it for the other daemon's
// waiter; the killed daemon's holder gets errors, not a silent lock; the
// stale mount is detached by the test.
func TestKilledDaemonFreesName(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{})

	h := e.Hold(t, a.Path("x"), "w")
	w := e.Waiter(t, b.Path("x"), "w")
	aw := e.Waiter(t, a.Path("x"), "w") // a waiter on the killed daemon

	killed := harness.Mono()
	a.Kill()
	granted := harness.Granted(t, w, patience)
	t.Logf("B's waiter granted %s after SIGKILL of daemon A", ms(granted-killed))
	assert.Less(t, time.Duration(granted-killed), 5*time.Second, "B's waiter not granted within 5s of daemon A's SIGKILL")

	for _, cmd := range []string{"write", "fstat"} {
		got := harness.Command(t, h, cmd)
		assert.Equal(t, "ENOTCONN", got, "%s on the dead daemon's lock descriptor", cmd)
	}
	errno := harness.OpenError(t, aw, patience)
	t.Logf("waiter on the killed daemon: %s", errno)

	// The killed daemon's mount is stale: ENOTCONN until detached.
	require.True(t, a.Mounted(), "the killed daemon's mount")
	_, err := os.Stat(a.Mountpoint + "/x")
	assert.ErrorIs(t, err, unix.ENOTCONN, "stat on the stale mount")
	require.NoError(t, unix.Unmount(a.Mountpoint, unix.MNT_DETACH))
	assert.False(t, a.Mounted())
	h.CloseStdin()
	h.Wait(patience)
}

// A stopped daemon keeps its names: the other daemon's waiter does not get
// them while it is stopped, and gets them when it resumes and releases.
func TestStoppedDaemonKeepsName(t *testing.T) {
	e := setup(t)
	const hb = 200 * time.Millisecond
	a, b := daemonPair(t, e, harness.DaemonConfig{Heartbeat: hb})

	h := e.Hold(t, a.Path("x"), "w")
	a.Signal(unix.SIGSTOP)
	t.Cleanup(func() { _ = unix.Kill(a.Pid(), unix.SIGCONT) }) // before the clients' cleanups
	w := e.Waiter(t, b.Path("x"), "w")
	stayBlocked(t, w, 8*hb)

	a.Signal(unix.SIGCONT)
	stayBlocked(t, w, 2*hb) // resumed, still held
	released := harness.Release(t, h)
	granted := harness.Granted(t, w, patience)
	t.Logf("granted %s after the resumed holder released", ms(granted-released))
}

// With --takeover-after, a waiter takes a name from a stopped daemon; the
// stopped daemon's holder sees the loss as EIO once it resumes.
func TestTakeoverFromStoppedDaemon(t *testing.T) {
	e := setup(t)
	const hb, takeover = 200 * time.Millisecond, 600 * time.Millisecond
	a, b := daemonPair(t, e, harness.DaemonConfig{Heartbeat: hb, TakeoverAfter: takeover})

	h := e.Hold(t, a.Path("x"), "rw") // rw: read and write can both be probed
	a.Signal(unix.SIGSTOP)
	stopped := harness.Mono()
	t.Cleanup(func() { _ = unix.Kill(a.Pid(), unix.SIGCONT) })
	w := e.GoClient(t, "-mode", "w", b.Path("x"))
	granted := harness.Granted(t, w, patience)
	t.Logf("taken over %s after SIGSTOP (takeover-after %v)", ms(granted-stopped), takeover)
	assert.GreaterOrEqual(t, time.Duration(granted-stopped), takeover-hb, "taken over before --takeover-after")

	a.Signal(unix.SIGCONT)
	harness.Eventually(t, patience, func() (bool, string) {
		got := harness.Command(t, h, "write")
		return got == "EIO", "write on the lost lock: " + got
	})
	for _, cmd := range []string{"read", "fsync"} {
		assert.Equal(t, "EIO", harness.Command(t, h, cmd), "%s on the lost lock", cmd)
	}
	// The taker holds it: A cannot grant it.
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "w"), "A after the takeover")
	harness.Release(t, h)
	waitLostClosed(t, a.Path("x")) // A forgets the lost lease at the RELEASE that follows close(2)
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "w"), "A after its lost holder closed")
	harness.Release(t, w)
	waitFree(t, e, a.Path("x"))
}

// TestKillHolderAcrossDaemons: a holder process killed on one daemon frees
// the name for a waiter on the other.
func TestKillHolderAcrossDaemons(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	h := e.Hold(t, a.Path("k"), "w")
	w := e.Waiter(t, b.Path("k"), "w")
	killed := harness.Mono()
	h.Signal(unix.SIGKILL)
	granted := harness.Granted(t, w, patience)
	t.Logf("waiter on B granted %s after SIGKILL of the holder on A", ms(granted-killed))
	assert.Less(t, time.Duration(granted-killed), handoffBound)
}
