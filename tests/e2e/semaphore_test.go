package e2e

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// setfattr -n user.lockfs.limit -v 3 M/pool makes pool a counting
// semaphore: three exclusive holders at once, FIFO beyond them, each with
// a token of its own; only root may set the limit.
func TestSemaphoreLimit(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	traversableTo(t, e, d.Mountpoint)
	pool := d.Path("pool")
	require.Equal(t, "1", lockXattr(t, pool, "user.lockfs.limit"), "a plain lock admits one holder")
	require.ErrorIs(t, unix.Setxattr(pool, "user.lockfs.limit", []byte("0"), 0), unix.EINVAL)
	require.ErrorIs(t, unix.Setxattr(pool, "user.lockfs.token", []byte("7"), 0), unix.EPERM)
	require.NoError(t, unix.Setxattr(pool, "user.lockfs.limit", []byte("3"), 0))
	require.Equal(t, "3", lockXattr(t, pool, "user.lockfs.limit"))

	var holders []*harness.Proc
	for range 3 {
		holders = append(holders, shellHold(t, e, pool, ">"))
	}
	requireHeld(t, e, pool)
	first := shellWaiter(t, e, pool, ">")
	requireBlockedEventually(t, first)
	second := shellWaiter(t, e, pool, ">")
	requireBlockedEventually(t, second)

	shellRelease(t, holders[0])
	first.WaitLine("granted", patience)
	requireBlocked(t, second)
	shellRelease(t, holders[1])
	second.WaitLine("granted", patience)

	// Only root may change a limit.
	p := asNobody(t, "setfattr-as-nobody", e.Python, "-c",
		"import os,sys\ntry:\n os.setxattr(sys.argv[1], 'user.lockfs.limit', b'9')\nexcept OSError as e:\n print(e.errno)\nelse:\n print(0)",
		pool)
	require.Equal(t, 0, p.Wait(patience), p.Stderr())
	require.Equal(t, "1", p.NextLine(patience), "EPERM for a non-root setxattr")
	require.Equal(t, "3", lockXattr(t, pool, "user.lockfs.limit"))
}

// requireBlockedEventually waits until p sleeps in open(2) without a grant.
func requireBlockedEventually(t *testing.T, p *harness.Proc) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		ok, state := harness.BlockedInOpen(p.Pid())
		return ok && !p.HasLine("granted"), p.Name + " blocked in open: " + state
	})
}
