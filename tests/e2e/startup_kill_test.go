package e2e

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Regression: a daemon SIGKILLed the moment its mount appeared could hang
// in D state forever. go-fuse's WaitMount opens a file in the new mount
// from the daemon itself; the thread waiting for that answer kept
// /dev/fuse open after the serving threads died. lockfs no longer does
// that self-open. The window is small, so the test repeats the race.
func TestKillRightAfterMount(t *testing.T) {
	e := setup(t)
	for i := range 40 {
		mnt := t.TempDir()
		d := e.SpawnDaemon(t, harness.DaemonConfig{Mountpoint: mnt})
		harness.Eventually(t, patience, func() (bool, string) {
			ok, err := harness.IsLockfsMounted(mnt)
			require.NoError(t, err)
			return ok || d.Exited(), "mount to appear"
		})
		d.Signal(unix.SIGKILL)
		d.Wait(patience) // fails the test, with the process state, if it hangs
		require.NoError(t, unix.Unmount(mnt, unix.MNT_DETACH), "round %d", i)
	}
}
