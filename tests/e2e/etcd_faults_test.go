package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// The fault tests use a 2 s session TTL (etcd's minimum), renewed every
// TTL/3. Their time bounds are the documented recovery times plus a slack
// for a loaded machine (scheduling, etcd's 500 ms expiry sweep); the
// measured times are logged.
const (
	faultTTL       = 2 * time.Second
	faultKeepalive = faultTTL / 3
	faultSlack     = 5 * time.Second
)

// etcd stopped while locks are held: the holders see EIO within TTL + one
// keepalive interval, and new opens fail after --etcd-op-timeout instead of
// hanging. Once etcd is back, the lost holders stay lost and the name can
// be taken again.
func TestEtcdStoppedWhileHeld(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	c := etcdDaemonConfig(s, "/lockfs-e2e/stopped/", faultTTL, "--etcd-op-timeout", "1s", "--etcd-dial-timeout", "1s")
	d := e.StartDaemon(t, c)
	hx := e.Hold(t, d.Path("x"), "rw")
	hs := e.Hold(t, sharedPath(d.Path("s")), "r")
	require.Equal(t, "ok", harness.Command(t, hx, "write"))

	stopped := harness.Mono()
	s.Stop(t)
	var lostAfter time.Duration
	harness.Eventually(t, faultTTL+faultKeepalive+faultSlack, func() (bool, string) {
		got := harness.Command(t, hx, "write")
		lostAfter = time.Duration(harness.Mono() - stopped)
		return got == "EIO", "write on the exclusive lock after etcd stopped: " + got
	})
	t.Logf("exclusive holder sees EIO %v after etcd stopped (TTL %v, keepalive %v)", lostAfter, faultTTL, faultKeepalive)
	for _, cmd := range []string{"read", "fsync"} {
		assert.Equal(t, "EIO", harness.Command(t, hx, cmd), "%s on the lost exclusive lock", cmd)
	}
	assert.Equal(t, "EIO", harness.Command(t, hs, "read"), "read on the lost shared lock")

	// New opens fail with EIO after a bounded time (--etcd-op-timeout),
	// not hang, and not EINTR: an internal request timeout is no signal.
	w := e.GoClient(t, "-mode", "w", d.Path("y"))
	errno := harness.OpenError(t, w, patience)
	assert.Equal(t, "EIO", errno, "open while etcd is down")

	// etcd comes back: the lost holders stay lost (no grant is carried
	// over), and once they close, the name can be taken again through a
	// new session (the old one's keys go when the daemon revokes its lease
	// or etcd expires it).
	s.Restart(t, e)
	assert.Equal(t, "EIO", harness.Command(t, hx, "write"), "write on the lost lock after etcd is back")
	harness.Release(t, hx)
	harness.Release(t, hs)
	// Opens fail (after --etcd-op-timeout) until the client has
	// reconnected, which its backoff (up to 2 s) may delay.
	closed := harness.Mono()
	harness.Eventually(t, patience, func() (bool, string) {
		got := probe(t, e, d.Path("x"), "w")
		return got == "granted", "O_NONBLOCK open of x once etcd is back: " + got
	})
	t.Logf("x granted again %s after the lost holders closed, etcd back", ms(harness.Mono()-closed))
	again := e.Hold(t, d.Path("x"), "w")
	assert.Equal(t, "ok", harness.Command(t, again, "write"), "write under the new grant")
	harness.Release(t, again)
}

// A SIGKILLed daemon's names free up for the other daemon within the TTL
// (etcd expires its lease).
func TestEtcdKilledDaemonFreesName(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	a, b, _ := etcdPair(t, e, s, faultTTL)

	h := e.Hold(t, a.Path("x"), "w")
	w := e.Waiter(t, b.Path("x"), "w")
	killed := harness.Mono()
	a.Kill()
	granted := harness.Granted(t, w, faultTTL+faultSlack)
	t.Logf("B's waiter granted %s after SIGKILL of daemon A (TTL %v)", ms(granted-killed), faultTTL)
	assert.Equal(t, "ENOTCONN", harness.Command(t, h, "write"), "write on the dead daemon's descriptor")
	h.CloseStdin()
	h.Wait(patience)
}

// A daemon SIGSTOPped past its TTL loses its names to the other daemon;
// once resumed, its holder's very first write fails with EIO (it never
// acts as if it still held the lock), and the other daemon keeps the name.
func TestEtcdStoppedDaemonLoses(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	a, b, _ := etcdPair(t, e, s, faultTTL)

	h := e.Hold(t, a.Path("x"), "rw")
	require.Equal(t, "ok", harness.Command(t, h, "write"))
	w := e.Waiter(t, b.Path("x"), "w")
	a.Signal(unix.SIGSTOP)
	stopped := harness.Mono()
	t.Cleanup(func() { _ = unix.Kill(a.Pid(), unix.SIGCONT) }) // before the clients' cleanups
	granted := harness.Granted(t, w, faultTTL+faultSlack)
	t.Logf("B's waiter granted %s after SIGSTOP of daemon A (TTL %v)", ms(granted-stopped), faultTTL)

	// The holder's write blocks in the kernel until A runs again; A
	// answers it only after SIGCONT.
	a.Signal(unix.SIGCONT)
	assert.Equal(t, "EIO", harness.Command(t, h, "write"), "first write on A after SIGCONT")
	for _, cmd := range []string{"read", "fsync", "write"} {
		assert.Equal(t, "EIO", harness.Command(t, h, cmd), "%s on the lost lock", cmd)
	}
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "w"), "A while B holds")
	harness.Release(t, h)
	waitLostClosed(t, a.Path("x")) // A forgets the lost lease at the RELEASE that follows close(2)
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "w"), "A after its lost holder closed")
	harness.Release(t, w)
	waitFree(t, e, a.Path("x"))
}
