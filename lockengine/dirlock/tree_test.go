package dirlock

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock directories of the dir backend: their layout on disk, symlinks,
// and how the sweeper, the heartbeat, takeover, the epoch and Open's
// checks treat nested names. The Tree contract itself is checked by the
// conformance suite (conformance_test.go).

func mkdirT(t *testing.T, tr lockengine.Tree, path string, attr lockengine.DirAttr) {
	t.Helper()
	require.NoError(t, tr.Mkdir(context.Background(), path, attr), "mkdir %q", path)
}

// bothResolvers runs f with openat2 and with the fallback that opens one
// component at a time.
func bothResolvers(t *testing.T, f func(t *testing.T, noOpenat2 func(*Backend))) {
	t.Run("openat2", func(t *testing.T) { f(t, func(*Backend) {}) })
	t.Run("walk", func(t *testing.T) { f(t, func(b *Backend) { b.openat2 = false }) })
}

// Layout: a top-level name's file stays at locks/NAME, a nested name's is
// at locks/DIR/NAME, and a lock directory is a real directory whose owner,
// group and mode are exactly what was asked, whatever the umask and a
// set-group-ID parent would have made of them.
func TestTreeLayout(t *testing.T) {
	dir := t.TempDir()
	b, q := openQueue(t, dir, Options{})
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if uid == 0 {
		uid, gid = 4242, 4343
	}
	mkdirT(t, q, "team", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o2775})
	mkdirT(t, q, "team/app", lockengine.DirAttr{UID: uid, GID: gid + 1, Mode: 0o1707})
	for path, want := range map[string]struct{ uid, gid, mode uint32 }{
		"team":     {uid, gid, 0o2775},
		"team/app": {uid, gid + 1, 0o1707},
	} {
		st := lstat(t, lockPath(dir, path))
		assert.Equal(t, uint32(unix.S_IFDIR), st.Mode&unix.S_IFMT, "%s is a real directory", path)
		assert.Equal(t, want.uid, st.Uid, "%s uid", path)
		assert.Equal(t, want.gid, st.Gid, "%s gid", path)
		assert.Equal(t, want.mode, st.Mode&0o7777, "%s mode", path)
		a, err := q.StatDir(context.Background(), path)
		require.NoError(t, err)
		assert.Equal(t, time.Unix(st.Ctim.Unix()), a.Mtime, "%s mtime is its ctime", path)
	}
	for _, name := range []string{"top", "team/x", "team/app/deploy"} {
		l := acquire(t, q, name, lockengine.Exclusive)
		st := lstat(t, lockPath(dir, name))
		assert.Equal(t, uint32(unix.S_IFREG), st.Mode&unix.S_IFMT, "%s", name)
		assert.Equal(t, uint32(filePerm), st.Mode&0o7777, "%s", name)
		require.NoError(t, l.Release())
	}
	// What Mkdir prepared in tmp/ is gone; the state dir and locks/
	// stay private.
	entries, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, entries)
	assert.Equal(t, uint32(dirPerm), fileMode(t, filepath.Join(dir, "locks")))
	assert.Equal(t, uint32(dirPerm), fileMode(t, dir))
	require.NoError(t, b.SetDirAttr(context.Background(), "team", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o700}))
	assert.Equal(t, uint32(0o700), fileMode(t, lockPath(dir, "team")))
}

// A symlink anywhere in a lock path is refused by every operation and
// left untouched; nothing is created where it points.
func TestTreeSymlinkRefused(t *testing.T) {
	bothResolvers(t, func(t *testing.T, noOpenat2 func(*Backend)) {
		dir := t.TempDir()
		b, q := openQueue(t, dir, Options{})
		noOpenat2(b)
		ctx := context.Background()
		mkdirT(t, q, "real", lockengine.DirAttr{Mode: 0o755})
		mkdirT(t, q, "real/sub", lockengine.DirAttr{Mode: 0o755})
		outside := t.TempDir()
		require.NoError(t, os.Symlink(lockPath(dir, "real"), lockPath(dir, "link")))
		require.NoError(t, os.Symlink(outside, lockPath(dir, "real/out")))
		require.NoError(t, os.Symlink(filepath.Join(outside, "f"), lockPath(dir, "real/fsym")))
		for _, try := range []bool{true, false} {
			// At the end of the path: not a lock file.
			assert.ErrorIs(t, promptError(t, q, "real/fsym", lockengine.Exclusive, try), lockengine.ErrNotRegular)
		}
		for _, name := range []string{"link/x", "link/sub/x", "real/out/x"} {
			for _, try := range []bool{true, false} {
				// In the path: not a lock directory.
				assert.ErrorIs(t, promptError(t, q, name, lockengine.Exclusive, try), lockengine.ErrNoDir, "%s", name)
			}
			assert.ErrorIs(t, q.Mkdir(ctx, name, lockengine.DirAttr{Mode: 0o755}), lockengine.ErrNoDir, "mkdir %s", name)
		}
		for _, path := range []string{"link", "link/sub", "real/out"} {
			_, err := q.StatDir(ctx, path)
			assert.ErrorIs(t, err, lockengine.ErrNoDir, "stat %s", path)
			_, err = q.ReadDir(ctx, path)
			assert.ErrorIs(t, err, lockengine.ErrNoDir, "readdir %s", path)
			assert.ErrorIs(t, q.SetDirAttr(ctx, path, lockengine.DirAttr{Mode: 0o777}), lockengine.ErrNoDir, "setattr %s", path)
			assert.Error(t, q.Rmdir(ctx, path), "rmdir %s", path)
		}
		names, err := q.ReadDir(ctx, "real")
		require.NoError(t, err)
		assert.Equal(t, []string{"sub"}, names, "a symlink is not a lock directory")
		entries, err := os.ReadDir(outside)
		require.NoError(t, err)
		assert.Empty(t, entries, "something was created through a symlink")
		entries, err = os.ReadDir(lockPath(dir, "real/sub"))
		require.NoError(t, err)
		assert.Empty(t, entries, "something was created through a symlink")
		assert.Equal(t, uint32(unix.S_IFLNK), lstat(t, lockPath(dir, "link")).Mode&unix.S_IFMT)
		assert.Equal(t, uint32(0o755), fileMode(t, lockPath(dir, "real")))
		// Nested names work through both resolvers.
		require.NoError(t, acquire(t, q, "real/sub/x", lockengine.Exclusive).Release())
	})
}

// Mkdir over the idle lock file of a name used before removes it under
// its flock and saves its token in the floor: the next grant of a name
// made again goes above it. An acquirer that had the old file open
// (this process's idle cache, or another backend's) finds the directory.
func TestTreeMkdirOverIdleFile(t *testing.T) {
	dir := t.TempDir()
	b1, q1 := openQueue(t, dir, Options{})
	_, q2 := openQueue(t, dir, Options{})
	var last uint64
	for _, q := range []*lockengine.Queue{q1, q2} {
		l := acquire(t, q, "n", lockengine.Exclusive)
		last = max(last, l.Token())
		require.NoError(t, l.Release()) // both cache a descriptor of the file
	}
	mkdirT(t, q1, "n", lockengine.DirAttr{Mode: 0o755})
	for _, q := range []*lockengine.Queue{q1, q2} {
		for _, try := range []bool{true, false} {
			require.ErrorIs(t, promptError(t, q, "n", lockengine.Exclusive, try), lockengine.ErrIsDir)
		}
	}
	require.NoError(t, q2.Rmdir(context.Background(), "n"))
	l := acquire(t, q2, "n", lockengine.Exclusive)
	assert.Greater(t, l.Token(), last, "token of a name made again")
	// Held (by another backend): not replaced.
	require.ErrorIs(t, b1.Mkdir(context.Background(), "n", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
	assert.Equal(t, uint32(unix.S_IFREG), lstat(t, lockPath(dir, "n")).Mode&unix.S_IFMT)
	require.NoError(t, l.Release())
}

// Rmdir removes the idle lock files in the directory, keeps held ones,
// and refuses what lockfs does not put there.
func TestTreeRmdirFiles(t *testing.T) {
	dir := t.TempDir()
	_, q1 := openQueue(t, dir, Options{})
	_, q2 := openQueue(t, dir, Options{})
	ctx := context.Background()
	mkdirT(t, q1, "d", lockengine.DirAttr{Mode: 0o755})
	for _, n := range []string{"d/a", "d/b", "d/c"} {
		require.NoError(t, acquire(t, q1, n, lockengine.Exclusive).Release())
	}
	l := acquire(t, q2, "d/b", lockengine.Shared)
	require.ErrorIs(t, q1.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
	assert.FileExists(t, lockPath(dir, "d/b"))
	require.NoError(t, l.Release())
	require.NoError(t, os.WriteFile(lockPath(dir, "d/junk\x01"), nil, 0o600))
	require.NoError(t, os.Symlink("/", lockPath(dir, "d/sym")))
	require.ErrorIs(t, q1.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
	require.NoError(t, os.Remove(lockPath(dir, "d/sym")))
	require.NoError(t, q1.Rmdir(ctx, "d"), "the junk file is an unused lock file like any other")
	assert.NoDirExists(t, lockPath(dir, "d"))
}

// A lock file or directory removed by hand: the holder learns it at its
// next heartbeat, and a waiter polling a file whose directory was removed
// fails with ErrNoDir instead of polling on.
func TestTreeRemovedByHand(t *testing.T) {
	const hb = 20 * time.Millisecond
	dir := t.TempDir()
	_, q1 := openQueue(t, dir, Options{Heartbeat: hb})
	_, q2 := openQueue(t, dir, Options{Heartbeat: hb})
	mkdirT(t, q1, "d", lockengine.DirAttr{Mode: 0o755})
	mkdirT(t, q1, "d/e", lockengine.DirAttr{Mode: 0o755})
	l := acquire(t, q1, "d/e/x", lockengine.Exclusive)
	ctx := testCtx(t, time.Minute)
	w := acquireAsync(ctx, q2, "d/e/x", lockengine.Exclusive)
	eventually(t, 30*time.Second, "waiter queued", func() bool {
		info, _ := q2.Inspect("d/e/x")
		return info.Waiters == 1
	})
	// The removal wakes the waiter (inotify), which may create its lock
	// file again before the directory goes: remove until it is gone.
	eventually(t, 30*time.Second, "the directory removed by hand", func() bool {
		return os.RemoveAll(lockPath(dir, "d")) == nil
	})
	select {
	case <-l.Done():
		require.ErrorIs(t, l.Err(), lockengine.ErrLost)
	case <-time.After(30 * time.Second):
		t.Fatal("the holder did not learn that its directory was removed")
	}
	select {
	case r := <-w:
		if r.err == nil {
			// It took a file it created before the removal won: that
			// file is gone too, so the lease is lost at its next
			// heartbeat.
			select {
			case <-r.l.Done():
				require.ErrorIs(t, r.l.Err(), lockengine.ErrLost)
			case <-time.After(30 * time.Second):
				t.Fatal("the waiter's grant on a removed file was not lost")
			}
			require.NoError(t, r.l.Release())
		} else {
			require.ErrorIs(t, r.err, lockengine.ErrNoDir)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter still polls a file whose directory was removed")
	}
	require.NoError(t, l.Release())
	_, ok := q2.Inspect("d/e/x")
	assert.False(t, ok)
}

// The sweeper removes unused lock files in every lock directory, never a
// held one, never a directory, and tokens of swept nested names keep
// increasing. Leftovers of an interrupted Mkdir in tmp/ are swept too.
func TestTreeSweep(t *testing.T) {
	dir := t.TempDir()
	b1, q1 := openQueue(t, dir, Options{IdleTTL: time.Nanosecond})
	_, q2 := openQueue(t, dir, Options{IdleTTL: time.Nanosecond})
	mkdirT(t, q1, "a", lockengine.DirAttr{Mode: 0o755})
	mkdirT(t, q1, "a/b", lockengine.DirAttr{Mode: 0o755})
	mkdirT(t, q1, "empty", lockengine.DirAttr{Mode: 0o755})
	l := acquire(t, q1, "a/b/x", lockengine.Exclusive)
	last := l.Token()
	require.NoError(t, l.Release())
	require.NoError(t, acquire(t, q1, "a/y", lockengine.Shared).Release())
	held := acquire(t, q2, "a/b/held", lockengine.Exclusive)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tmp", mkdirTmpPrefix+"crashed"), 0o700))
	past := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(dir, "tmp", mkdirTmpPrefix+"crashed"), past, past))
	sweepGone(t, b1, lockPath(dir, "a/b/x"))
	sweepGone(t, b1, lockPath(dir, "a/y"))
	assert.FileExists(t, lockPath(dir, "a/b/held"))
	for _, d := range []string{"a", "a/b", "empty"} {
		assert.DirExists(t, lockPath(dir, d))
	}
	assert.NoDirExists(t, filepath.Join(dir, "tmp", mkdirTmpPrefix+"crashed"))
	assert.NoError(t, held.Err())
	l = acquire(t, q2, "a/b/x", lockengine.Exclusive)
	assert.Greater(t, l.Token(), last)
	require.NoError(t, l.Release())
	require.NoError(t, held.Release())
}

// Takeover of a stuck holder of a nested name: the new file is renamed
// into the lock directory.
func TestTreeTakeover(t *testing.T) {
	const hb = 10 * time.Millisecond
	opts := Options{Heartbeat: hb, TakeoverAfter: 3 * hb}
	dir := t.TempDir()
	b, q := openQueue(t, dir, opts)
	mkdirT(t, q, "d", lockengine.DirAttr{Mode: 0o755})
	mkdirT(t, q, "d/e", lockengine.DirAttr{Mode: 0o755})
	old := acquire(t, q, "d/e/x", lockengine.Exclusive)
	mustHold(t, b, "d/e/x").reg.Stop()
	_, q2 := openQueue(t, dir, opts)
	l := acquire(t, q2, "d/e/x", lockengine.Exclusive)
	assert.Greater(t, l.Token(), old.Token())
	st := lstat(t, lockPath(dir, "d/e/x"))
	assert.Equal(t, uint32(unix.S_IFREG), st.Mode&unix.S_IFMT)
	require.NoError(t, l.Release())
	require.NoError(t, old.Release())
}

// Open: lock directories owned by other users and with any mode are the
// users' data (not refused, not tightened); lock files in them are checked
// like any other; a Mkdir staging directory left in tmp/ is accepted.
func TestTreeOpenChecks(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	b, q := openQueue(t, dir, Options{})
	mkdirT(t, q, "team", lockengine.DirAttr{UID: nobody, GID: nobody, Mode: 0o777})
	mkdirT(t, q, "team/app", lockengine.DirAttr{UID: nobody, GID: nobody, Mode: 0o2775})
	require.NoError(t, acquire(t, q, "team/app/x", lockengine.Exclusive).Release())
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tmp", mkdirTmpPrefix+"left"), 0o700))
	require.NoError(t, os.Chown(filepath.Join(dir, "tmp", mkdirTmpPrefix+"left"), nobody, nobody))
	require.NoError(t, q.Close())
	require.NoError(t, b.Close())

	b2, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, uint32(0o777), fileMode(t, lockPath(dir, "team")))
	assert.Equal(t, uint32(0o2775), fileMode(t, lockPath(dir, "team/app")))
	require.NoError(t, b2.Close())

	require.NoError(t, os.Chmod(lockPath(dir, "team/app/x"), 0o644))
	b3, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, uint32(filePerm), fileMode(t, lockPath(dir, "team/app/x")), "a nested lock file is tightened")
	require.NoError(t, b3.Close())

	require.NoError(t, os.Chown(lockPath(dir, "team/app/x"), nobody, nobody))
	_, err = openBounded(t, dir, Options{})
	require.ErrorIs(t, err, ErrUnsafeStateDir, "a nested lock file of another user")
	assert.ErrorContains(t, err, lockPath(dir, "team/app/x"))
}

// A missing epoch is recomputed from the lock files in every directory.
func TestTreeEpochFromNestedFiles(t *testing.T) {
	dir := t.TempDir()
	b, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	mkdirT(t, b, "d", lockengine.DirAttr{Mode: 0o755})
	mkdirT(t, b, "d/e", lockengine.DirAttr{Mode: 0o755})
	high := grant(t, b, "d/e/x")
	require.NoError(t, b.Close())
	// Only the nested file knows the highest token.
	require.NoError(t, os.Remove(filepath.Join(dir, "epoch")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "guard"), nil, 0o600))
	b2, err := openBounded(t, dir, Options{})
	require.NoError(t, err)
	assert.Equal(t, high>>32+1, b2.Epoch())
	assert.Greater(t, grant(t, b2, "top"), high)
}
