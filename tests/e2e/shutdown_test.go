package e2e

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// SIGTERM (and SIGINT) while a lock is held and a waiter blocks: the
// daemon unmounts (lazily), exits 0 promptly, the waiter gets an error,
// the holder's descriptor fails, and no mount is left.
func TestShutdownWithHolderAndWaiter(t *testing.T) {
	e := setup(t)
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			t.Parallel()
			d := e.StartDaemon(t, harness.DaemonConfig{})
			h := e.Hold(t, d.Path("x"), "w")
			w := e.Waiter(t, d.Path("x"), "w")
			s := shellWaiter(t, e, d.Path("x"), ">")
			s.WaitBlockedInOpen(patience)

			start := time.Now()
			d.Signal(sig)
			code := d.Wait(patience)
			t.Logf("daemon exited %v after %v", code, time.Since(start))
			assert.Equal(t, 0, code, "exit code after %v", sig)
			assert.False(t, d.Mounted(), "mount left after the daemon exited")

			errno := harness.OpenError(t, w, patience)
			t.Logf("blocked Go waiter got %s", errno)
			assert.NotEqual(t, 0, s.Wait(patience), "blocked bash waiter must fail")
			assert.False(t, s.HasLine("granted"))
			got := harness.Command(t, h, "write")
			t.Logf("holder's write after shutdown: %s", got)
			assert.NotEqual(t, "ok", got, "a write on the lock of a daemon that is gone")
			h.CloseStdin()
			h.Wait(patience)
		})
	}
}

// SIGTERM of an idle daemon: exit 0, unmounted.
func TestShutdownIdle(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	require.Equal(t, "granted", probe(t, e, d.Path("x"), "w"))
	d.Signal(unix.SIGTERM)
	assert.Equal(t, 0, d.Wait(patience))
	assert.False(t, d.Mounted())
}
