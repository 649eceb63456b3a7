package e2e

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// A daemon SIGKILLed the moment its mount appears exits and is reaped; it
// does not hang in D state. A daemon that opens a file in its own new
// mount while starting (go-fuse's WaitMount does; fsnode.Mount does not)
// would hang: the thread waiting for that answer keeps /dev/fuse open
// after the serving threads die. The window is small, so the test repeats
// the race.
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
