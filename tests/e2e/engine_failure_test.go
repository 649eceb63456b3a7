package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// requireEngineFailure opens path (blocking, exclusive) and asserts that
// the open fails promptly with an errno that is not a lock outcome, and
// that the daemon logs a line naming the lock.
func requireEngineFailure(t *testing.T, e *harness.Env, d *harness.Daemon, name string) {
	t.Helper()
	c := e.GoClient(t, "-mode", "w", d.Path(name))
	errno := harness.OpenError(t, c, patience)
	t.Logf("open of %s failed with %s", name, errno)
	assert.NotContains(t, []string{"EAGAIN", "EINTR", "EWOULDBLOCK"}, errno, "an engine failure must not look like a lock outcome")
	t.Logf("daemon log: %s", waitProblemLog(t, d, name))
}

// waitProblemLog waits for a WARN or ERROR line of the daemon's log that
// names lock name, and returns it.
func waitProblemLog(t *testing.T, d *harness.Daemon, name string) string {
	t.Helper()
	var found string
	harness.Eventually(t, patience, func() (bool, string) {
		for line := range strings.SplitSeq(d.Log(), "\n") {
			if strings.Contains(line, "lock="+name+" ") &&
				(strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")) {
				found = line
				return true, ""
			}
		}
		return false, "no WARN/ERROR log line naming lock=" + name + "; log:\n" + d.Log()
	})
	return found
}

// An engine failure makes open fail with an error and a log line, never a
// false grant; the daemon keeps serving and recovers once the cause is
// repaired.
func TestEngineFailure(t *testing.T) {
	e := setup(t)

	t.Run("state dir full", func(t *testing.T) {
		t.Parallel()
		// A tiny tmpfs as the state dir, filled up to its inode limit:
		// the engine cannot create the lock file of a new name (ENOSPC).
		sd := t.TempDir()
		require.NoError(t, unix.Mount("tmpfs", sd, "tmpfs", 0, "size=4m,nr_inodes=64,mode=0755"))
		t.Cleanup(func() { // runs after the daemon's cleanup
			if err := unix.Unmount(sd, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount tmpfs %s: %v", sd, err)
			}
		})
		d := e.StartDaemon(t, harness.DaemonConfig{StateDir: sd})
		require.Equal(t, "granted", probe(t, e, d.Path("warm"), "w"))
		waitHolders(t, d.Path("warm"), 0) // released after the try's close(2): warm is tried again below

		fill := filepath.Join(sd, "fill")
		require.NoError(t, os.Mkdir(fill, 0o755))
		for i := 0; ; i++ {
			f, err := os.Create(filepath.Join(fill, fmt.Sprint(i)))
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			require.NoError(t, err)
			f.Close()
			require.Less(t, i, 1000, "tmpfs does not fill up")
		}

		requireEngineFailure(t, e, d, "fresh")
		// Still serving: a name whose lock file exists, and lookups.
		assert.Equal(t, "granted", probe(t, e, d.Path("warm"), "w"), "a name with an existing lock file")
		_, err := os.Stat(d.Path("other"))
		assert.NoError(t, err)

		require.NoError(t, os.RemoveAll(fill))
		assert.Equal(t, "granted", probe(t, e, d.Path("fresh"), "w"), "after the state dir has room again")
		assert.False(t, d.Exited())
	})

	t.Run("backing path not a regular file", func(t *testing.T) {
		t.Parallel()
		// lockengine's documented layout: STATE/locks/NAME. A symlink
		// there is never a lock file (ErrNotRegular). (A directory there
		// is a lock directory.)
		d := e.StartDaemon(t, harness.DaemonConfig{})
		bad := filepath.Join(d.StateDir, "locks", "bad")
		require.NoError(t, os.Symlink(filepath.Join(d.StateDir, "elsewhere"), bad))

		requireEngineFailure(t, e, d, "bad")
		assert.Equal(t, "granted", probe(t, e, d.Path("good"), "w"), "another name")
		_, err := os.Lstat(bad)
		assert.NoError(t, err, "the engine must not remove what it did not create")

		require.NoError(t, os.Remove(bad))
		assert.Equal(t, "granted", probe(t, e, d.Path("bad"), "w"), "after the symlink was removed")
	})
}

// A lock whose backing file is removed under it is lost: read, write and
// fsync on its descriptor fail with EIO (found by the heartbeat), the
// daemon logs it, and the name works again after the holder closes.
func TestLostLockReportsEIO(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Heartbeat: 200 * time.Millisecond})
	h := e.Hold(t, d.Path("x"), "rw")
	require.Equal(t, "ok", harness.Command(t, h, "write"))

	// lockengine's documented layout: STATE/locks/NAME.
	require.NoError(t, os.Remove(filepath.Join(d.StateDir, "locks", "x")))
	start := time.Now()
	harness.Eventually(t, patience, func() (bool, string) {
		got := harness.Command(t, h, "write")
		return got == "EIO", "write after the lock file was removed: " + got
	})
	t.Logf("loss reported after %v (heartbeat 200ms)", time.Since(start))
	for _, cmd := range []string{"read", "fsync"} {
		assert.Equal(t, "EIO", harness.Command(t, h, cmd), "%s on a lost lock", cmd)
	}
	t.Logf("daemon log: %s", waitProblemLog(t, d, "x"))
	harness.Release(t, h)
	waitFree(t, e, d.Path("x"))
}
