package dirlock

// Faults of the backing directory: read-only, removed, something other
// than a lock file at the lock path, the lock file removed while held, the
// refresh failing, the guard held by a stopped process, and sweeping.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock/internal/heartbeat"
)

// bindReadOnly makes path read-only with a read-only bind mount of path
// onto itself (chmod does not stop root). Cleanup unmounts it; register it
// before opening anything under path, so that it runs last.
func bindReadOnly(t *testing.T, path string) {
	t.Helper()
	require.NoError(t, unix.Mount(path, path, "", unix.MS_BIND, ""), "bind mount %s", path)
	t.Cleanup(func() {
		var err error
		for range 100 {
			if err = unix.Unmount(path, 0); err != unix.EBUSY {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err == unix.EBUSY {
			err = unix.Unmount(path, unix.MNT_DETACH)
		}
		assert.NoError(t, err, "unmount %s", path)
	})
	require.NoError(t, unix.Mount("", path, "", unix.MS_PRIVATE, ""))
	require.NoError(t, unix.Mount("", path, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""), "remount %s read-only", path)
	require.ErrorIs(t, unix.Access(path, unix.W_OK), unix.EROFS)
}

// prepareDir creates a backing directory in which name has been locked
// and released once (so its lock file exists with a token).
func prepareDir(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	b, err := Open(dir, Options{SweepInterval: -1})
	require.NoError(t, err)
	q := lockengine.NewQueue(b, lockengine.QueueOptions{})
	l, err := q.Acquire(context.Background(), name, lockengine.Exclusive)
	require.NoError(t, err)
	require.NoError(t, l.Release())
	require.NoError(t, q.Close())
	return dir
}

// promptError acquires (or tries) name and requires an error that is not
// the context's: the call gave up by itself instead of retrying until the
// deadline. It returns the error.
func promptError(t *testing.T, q *lockengine.Queue, name string, mode lockengine.Mode, try bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	var (
		l   *lockengine.Lease
		err error
	)
	if try {
		l, err = q.TryAcquire(ctx, name, mode)
	} else {
		l, err = q.Acquire(ctx, name, mode)
	}
	if l != nil {
		_ = l.Release()
	}
	require.Error(t, err, "granted %q", name)
	require.NotErrorIs(t, err, context.DeadlineExceeded, "kept retrying %q until the deadline", name)
	require.ErrorContains(t, err, name, "the error names the lock")
	t.Logf("%q (try=%v) failed after %v: %v", name, try, time.Since(start).Round(time.Microsecond), err)
	return err
}

// TestFaultReadOnlyDir: a read-only backing directory fails Open, and a
// read-only locks or tmp directory fails acquisitions, promptly, with
// EROFS and the lock's name; nothing is granted.
func TestFaultReadOnlyDir(t *testing.T) {
	t.Run("state dir", func(t *testing.T) {
		dir := prepareDir(t, "old")
		bindReadOnly(t, dir)
		b, err := Open(dir, Options{SweepInterval: -1})
		if b != nil {
			_ = b.Close()
		}
		require.ErrorIs(t, err, unix.EROFS)
	})
	t.Run("locks dir", func(t *testing.T) {
		dir := prepareDir(t, "old")
		bindReadOnly(t, filepath.Join(dir, "locks"))
		_, q := openQueue(t, dir, Options{})
		for _, name := range []string{"new", "old"} {
			for _, mode := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
				for _, try := range []bool{false, true} {
					require.ErrorIs(t, promptError(t, q, name, mode, try), unix.EROFS)
				}
			}
		}
	})
	t.Run("tmp dir during takeover", func(t *testing.T) {
		const hb = 10 * time.Millisecond
		dir := prepareDir(t, "x")
		bindReadOnly(t, filepath.Join(dir, "tmp"))
		b1, q1 := openQueue(t, dir, Options{Heartbeat: hb})
		l := acquire(t, q1, "x", lockengine.Exclusive)
		mustHold(t, b1, "x").reg.Stop() // stuck
		_, q2 := openQueue(t, dir, Options{Heartbeat: hb, TakeoverAfter: 3 * hb})
		require.ErrorIs(t, promptError(t, q2, "x", lockengine.Exclusive, false), unix.EROFS)
		assert.NoError(t, l.Err(), "the stuck holder keeps the lock")
	})
}

// TestFaultDirRemoved: the backing directory removed after Open. New and
// previously used names fail promptly; a holder reports the lock lost; a
// waiter gets an error, not a grant and not an endless wait.
func TestFaultDirRemoved(t *testing.T) {
	const hb = 500 * time.Millisecond
	dir := t.TempDir()
	_, q1 := openQueue(t, dir, Options{Heartbeat: hb})
	_, q2 := openQueue(t, dir, Options{Heartbeat: hb})
	l := acquire(t, q1, "used", lockengine.Exclusive)
	require.NoError(t, l.Release()) // its descriptor stays cached
	held := acquire(t, q1, "held", lockengine.Exclusive)
	waiter := acquireAsync(testCtx(t, time.Minute), q2, "held", lockengine.Exclusive)
	eventually(t, 10*time.Second, "the waiter to queue", func() bool {
		s := q2.Snapshot()
		return len(s) == 1 && s[0].Waiters == 1
	})

	// The waiter wakes when its file goes and may create a new one in
	// locks/ before RemoveAll removes the directory: remove again.
	eventually(t, 10*time.Second, "the state directory to be removed", func() bool { return os.RemoveAll(dir) == nil })
	t0 := time.Now()
	for _, name := range []string{"fresh", "used"} {
		for _, try := range []bool{false, true} {
			require.ErrorIs(t, promptError(t, q1, name, lockengine.Exclusive, try), unix.ENOENT)
		}
	}
	select {
	case <-held.Done():
		t.Logf("holder lost %v after the directory was removed", time.Since(t0))
		require.ErrorIs(t, held.Err(), lockengine.ErrLost)
	case <-time.After(30 * time.Second):
		t.Fatal("the holder never learned that its lock file is gone")
	}
	assert.LessOrEqual(t, time.Since(t0), lostBound(hb)+10*time.Second, "lost within the heartbeat bound (with slack for a loaded machine)")
	select {
	case r := <-waiter:
		if r.err == nil {
			// Woken by the removal of its file, the waiter created and
			// locked a new one before RemoveAll got to the directory
			// (then removed again above): it must lose that lock.
			select {
			case <-r.l.Done():
				require.ErrorIs(t, r.l.Err(), lockengine.ErrLost)
				t.Logf("waiter: granted in the directory being removed, then lost: %v", r.l.Err())
			case <-time.After(30 * time.Second):
				t.Fatal("a waiter holds a lock in a removed directory")
			}
			break
		}
		require.NotErrorIs(t, r.err, context.DeadlineExceeded)
		t.Logf("waiter: %v", r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter still waits in a removed directory")
	}
}

// TestFaultNotRegular: anything but a regular lock file with one link at
// the lock path is refused promptly with ErrNotRegular (a directory, which
// is a lock directory, with ErrIsDir), for every kind of acquisition, and
// left exactly as it was (not truncated, not written, not deleted, not
// followed), also by the sweeper.
func TestFaultNotRegular(t *testing.T) {
	const precious = "precious data\n"
	cases := []struct {
		name  string
		setup func(t *testing.T, dir, lock string) (check func(t *testing.T))
		want  error // ErrNotRegular if nil
	}{
		{"directory", func(t *testing.T, dir, lock string) func(t *testing.T) {
			require.NoError(t, os.Mkdir(lock, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(lock, "inner"), []byte(precious), 0o644))
			return func(t *testing.T) {
				data, err := os.ReadFile(filepath.Join(lock, "inner"))
				require.NoError(t, err)
				assert.Equal(t, precious, string(data))
			}
		}, lockengine.ErrIsDir},
		{"symlink to data", func(t *testing.T, dir, lock string) func(t *testing.T) {
			target := filepath.Join(dir, "data")
			require.NoError(t, os.WriteFile(target, []byte(precious), 0o644))
			require.NoError(t, os.Symlink(target, lock))
			before := lstat(t, target)
			return func(t *testing.T) {
				data, err := os.ReadFile(target)
				require.NoError(t, err)
				assert.Equal(t, precious, string(data))
				after := lstat(t, target)
				assert.Equal(t, before.Mtim, after.Mtim, "target's mtime")
				assert.Equal(t, before.Ctim, after.Ctim, "target's ctime")
			}
		}, nil},
		{"dangling symlink", func(t *testing.T, dir, lock string) func(t *testing.T) {
			target := filepath.Join(dir, "nothing")
			require.NoError(t, os.Symlink(target, lock))
			return func(t *testing.T) { assert.NoFileExists(t, target, "the symlink was followed") }
		}, nil},
		{"hard link", func(t *testing.T, dir, lock string) func(t *testing.T) {
			other := filepath.Join(dir, "data")
			require.NoError(t, os.WriteFile(other, []byte(precious), 0o644))
			require.NoError(t, os.Link(other, lock))
			before := lstat(t, other)
			return func(t *testing.T) {
				data, err := os.ReadFile(other)
				require.NoError(t, err)
				assert.Equal(t, precious, string(data))
				assert.Equal(t, before.Mtim, lstat(t, other).Mtim)
			}
		}, nil},
		{"fifo", func(t *testing.T, dir, lock string) func(t *testing.T) {
			require.NoError(t, unix.Mkfifo(lock, 0o644))
			return func(t *testing.T) {}
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			b, q := openQueue(t, dir, Options{IdleTTL: time.Nanosecond})
			lock := lockPath(dir, "x")
			check := c.setup(t, dir, lock)
			before := lstat(t, lock)
			want := c.want
			if want == nil {
				want = lockengine.ErrNotRegular
			}
			for _, mode := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
				for _, try := range []bool{false, true} {
					require.ErrorIs(t, promptError(t, q, "x", mode, try), want)
				}
			}
			assert.Zero(t, b.Sweep())
			after := lstat(t, lock)
			assert.Equal(t, before.Ino, after.Ino, "the thing at the lock path was replaced or removed")
			assert.Equal(t, before.Mode, after.Mode)
			check(t)
		})
	}

	// A lock file that was hard-linked after this process opened it (its
	// descriptor is cached) is refused too, and its record is not written.
	t.Run("hard link after use", func(t *testing.T) {
		dir := t.TempDir()
		_, q := openQueue(t, dir, Options{})
		l := acquire(t, q, "x", lockengine.Exclusive)
		require.NoError(t, l.Release())
		lock := lockPath(dir, "x")
		require.NoError(t, os.Link(lock, filepath.Join(dir, "other")))
		before, err := os.ReadFile(lock)
		require.NoError(t, err)
		for _, mode := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
			for _, try := range []bool{false, true} {
				require.ErrorIs(t, promptError(t, q, "x", mode, try), lockengine.ErrNotRegular)
			}
		}
		after, err := os.ReadFile(lock)
		require.NoError(t, err)
		assert.Equal(t, string(before), string(after), "the record of a hard-linked file was written")
	})
}

// TestFaultLockFileRemovedWhileHeld: removing the lock file by hand while it
// is held makes the holder report the lock lost within about one interval;
// a waiter in another process then gets the name, and the old holder's
// engine can take it again afterwards.
func TestFaultLockFileRemovedWhileHeld(t *testing.T) {
	const hb = 500 * time.Millisecond
	dir := t.TempDir()
	_, q1 := openQueue(t, dir, Options{Heartbeat: hb})
	_, q2 := openQueue(t, dir, Options{Heartbeat: hb})
	l := acquire(t, q1, "x", lockengine.Exclusive)
	waiter := acquireAsync(testCtx(t, time.Minute), q2, "x", lockengine.Exclusive)
	eventually(t, 10*time.Second, "the waiter to queue", func() bool {
		s := q2.Snapshot()
		return len(s) == 1 && s[0].Waiters == 1
	})

	require.NoError(t, os.Remove(lockPath(dir, "x")))
	t0 := time.Now()
	select {
	case <-l.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the holder never learned that its lock file was removed")
	}
	d := time.Since(t0)
	t.Logf("removed -> holder lost after %v (heartbeat %v): %v", d, hb, l.Err())
	require.ErrorIs(t, l.Err(), lockengine.ErrLost)
	assert.LessOrEqual(t, d, lostBound(hb))
	require.NoError(t, l.Release(), "releasing a lost lease")

	var l2 *lockengine.Lease
	select {
	case r := <-waiter:
		require.NoError(t, r.err)
		l2 = r.l
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter did not get the name after the holder lost it")
	}
	_, err := q1.TryAcquire(context.Background(), "x", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "the new holder must exclude the old holder's engine")
	require.NoError(t, l2.Release())
	l3 := acquire(t, q1, "x", lockengine.Exclusive)
	require.NoError(t, l3.Release())
	t.Logf("tokens: removed holder %d, next %d, then %d", l.Token(), l2.Token(), l3.Token())
}

// TestFaultRefreshFailing: when the heartbeat's refresh of a held lock file
// keeps failing, the holder reports the lock lost (ErrLost wrapping
// heartbeat.ErrFailing) within about one interval plus the retries, and
// the name can be taken again once the stale descriptor is gone.
func TestFaultRefreshFailing(t *testing.T) {
	const hb = 500 * time.Millisecond
	bound := hb + hb/2 + 500*time.Millisecond // first failed beat, two retries at hb/4, slack

	expectLost := func(t *testing.T, l *lockengine.Lease, t0 time.Time) {
		t.Helper()
		select {
		case <-l.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("a holder whose refresh keeps failing never reported the lock lost")
		}
		d := time.Since(t0)
		t.Logf("refresh failing -> lost after %v (heartbeat %v): %v", d, hb, l.Err())
		require.ErrorIs(t, l.Err(), lockengine.ErrLost)
		require.ErrorIs(t, l.Err(), heartbeat.ErrFailing)
		assert.LessOrEqual(t, d, bound)
	}

	// White-box: the hold's descriptor is swapped for an invalid one, so
	// futimens fails with EBADF while the path still verifies.
	t.Run("bad descriptor", func(t *testing.T) {
		dir := t.TempDir()
		b, q := openQueue(t, dir, Options{Heartbeat: hb})
		l := acquire(t, q, "x", lockengine.Exclusive)
		h := mustHold(t, b, "x")
		h.mu.Lock()
		realFd := h.lf.fd
		h.lf.fd = -1
		h.mu.Unlock()
		t.Cleanup(func() { closeFd(realFd) })
		expectLost(t, l, time.Now())
		require.ErrorIs(t, l.Err(), unix.EBADF)

		// The real descriptor still holds the flock: nobody gets the name
		// until it is closed.
		_, q2 := openQueue(t, dir, Options{Heartbeat: hb})
		_, err := q2.TryAcquire(context.Background(), "x", lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrWouldBlock)
		closeFd(realFd)
		realFd = -1
		l2 := acquire(t, q2, "x", lockengine.Exclusive)
		assert.Greater(t, l2.Token(), l.Token())
		require.NoError(t, l2.Release())
	})

	// The lock file made immutable (chattr +i): futimens fails with EPERM,
	// even for root.
	t.Run("immutable file", func(t *testing.T) {
		dir := t.TempDir()
		_, q := openQueue(t, dir, Options{Heartbeat: hb})
		l := acquire(t, q, "x", lockengine.Exclusive)
		fd, err := unix.Open(lockPath(dir, "x"), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		require.NoError(t, err)
		t.Cleanup(func() { closeFd(fd) })
		flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
		require.NoError(t, err)
		require.NoError(t, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL)))
		t.Cleanup(func() { // before the directory is removed
			assert.NoError(t, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags)))
		})
		expectLost(t, l, time.Now())
		require.ErrorIs(t, l.Err(), unix.EPERM)
	})
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h (chattr +i).
const fsImmutableFL = 0x10

// TestFaultGuardHeldByStoppedProcess: a stopped process holding the guard
// exclusively costs liveness only, never a false grant.
//
// Armed (some backend on the directory may take over): TryAcquire
// would-blocks, Acquire waits, a takeover of a stuck holder that is due
// waits too, a sweep gives up without removing anything, and locks already
// held stay held; once the process dies the waiters are granted.
//
// Not armed (no takeover anywhere): acquirers do not need the guard and
// proceed; only the sweep gives up.
func TestFaultGuardHeldByStoppedProcess(t *testing.T) {
	const hb = 20 * time.Millisecond
	type setup struct {
		dir       string
		b         *Backend
		q         *lockengine.Queue
		held      *lockengine.Lease
		guardProc *helperProc
	}
	// start opens a backend, holds "held", leaves "idle" unused, runs
	// before and then has a stopped process hold the guard.
	start := func(t *testing.T, opts Options, before func(dir string)) setup {
		dir := t.TempDir()
		opts.Heartbeat, opts.GuardWait, opts.IdleTTL = hb, 50*time.Millisecond, time.Nanosecond
		b, q := openQueue(t, dir, opts)
		held := acquire(t, q, "held", lockengine.Exclusive)
		idle := acquire(t, q, "idle", lockengine.Exclusive)
		require.NoError(t, idle.Release())
		if before != nil {
			before(dir)
		}
		p := startHelper(t, "flock", helperArgs{Path: filepath.Join(dir, "guard")})
		p.expect(t, "ready", 30*time.Second)
		p.signal(t, unix.SIGSTOP)
		p.waitStopped(t)
		return setup{dir, b, q, held, p}
	}
	sweepGivesUp := func(t *testing.T, s setup) {
		assert.Zero(t, s.b.Sweep(), "swept while the guard was held")
		assert.FileExists(t, lockPath(s.dir, "idle"))
	}

	t.Run("armed", func(t *testing.T) {
		// A stuck holder whose takeover falls due while the guard is busy.
		var stuck *lockengine.Lease
		s := start(t, Options{TakeoverAfter: 3 * hb}, func(dir string) {
			bs, qs := openQueue(t, dir, Options{Heartbeat: hb})
			stuck = acquire(t, qs, "stuck", lockengine.Exclusive)
			mustHold(t, bs, "stuck").reg.Stop()
		})

		_, err := s.q.TryAcquire(context.Background(), "a", lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrWouldBlock)
		ctx := testCtx(t, time.Minute)
		waitA := acquireAsync(ctx, s.q, "a", lockengine.Exclusive)
		waitStuck := acquireAsync(ctx, s.q, "stuck", lockengine.Exclusive)
		sweepGivesUp(t, s)
		// Observe for a while (many guard waits, many TakeoverAfters):
		// nothing may be granted.
		select {
		case r := <-waitA:
			t.Fatalf("granted a new name while the guard was held (err %v)", r.err)
		case r := <-waitStuck:
			t.Fatalf("took over while the guard was held (err %v)", r.err)
		case <-time.After(500 * time.Millisecond):
		}
		assert.NoError(t, s.held.Err(), "a held lock was lost because the guard was busy")
		assert.NoError(t, stuck.Err())

		s.guardProc.signal(t, unix.SIGKILL)
		for _, c := range []<-chan result{waitA, waitStuck} {
			select {
			case r := <-c:
				require.NoError(t, r.err)
				require.NoError(t, r.l.Release())
			case <-time.After(30 * time.Second):
				t.Fatal("not granted after the guard holder died")
			}
		}
		require.NoError(t, s.held.Release())
	})

	t.Run("not armed", func(t *testing.T) {
		s := start(t, Options{}, nil)
		l, err := s.q.TryAcquire(context.Background(), "a", lockengine.Exclusive)
		require.NoError(t, err, "without takeover, acquirers do not need the guard")
		require.NoError(t, l.Release())
		sweepGivesUp(t, s)
		assert.NoError(t, s.held.Err())
		require.NoError(t, s.held.Release())
	})
}

// TestFaultSweep: Sweep removes lock files nobody uses, never one that is
// held (by this backend, another one, exclusively or shared), and tokens of
// a swept and recreated name keep increasing (the floor), in this backend
// and others; shared grants of a recreated file carry the last exclusive
// token.
func TestFaultSweep(t *testing.T) {
	const hb = 50 * time.Millisecond
	dir := t.TempDir()
	b1, q1 := openQueue(t, dir, Options{Heartbeat: hb, IdleTTL: time.Nanosecond})
	b2, q2 := openQueue(t, dir, Options{Heartbeat: hb, IdleTTL: time.Nanosecond})

	l := acquire(t, q1, "swept", lockengine.Exclusive)
	last := l.Token()
	require.NoError(t, l.Release())
	heldHere := acquire(t, q1, "held-here", lockengine.Exclusive)
	heldThere := acquire(t, q2, "held-there", lockengine.Exclusive)
	heldShared := acquire(t, q2, "held-shared", lockengine.Shared)
	heldNames := []string{"held-here", "held-there", "held-shared"}
	inos := map[string]uint64{}
	for _, n := range heldNames {
		inos[n] = lstat(t, lockPath(dir, n)).Ino
	}

	swept := time.Now()
	assert.Equal(t, 1, b1.Sweep(), "swept files")
	assert.NoFileExists(t, lockPath(dir, "swept"))
	assert.Zero(t, b2.Sweep())
	for _, n := range heldNames {
		assert.Equal(t, inos[n], lstat(t, lockPath(dir, n)).Ino, "held lock file %s was removed", n)
	}
	// Once every held file has been refreshed after the sweep (a beat
	// verified it), none of the holders may have lost its lock.
	eventually(t, 30*time.Second, "the held files to be refreshed", func() bool {
		for _, n := range heldNames {
			st := lstat(t, lockPath(dir, n))
			if !time.Unix(st.Mtim.Unix()).After(swept) {
				return false
			}
		}
		return true
	})
	for _, l := range []*lockengine.Lease{heldHere, heldThere, heldShared} {
		assert.NoError(t, l.Err(), "%s", l.Name())
	}

	// Swept and recreated, again and again, from both backends: tokens
	// keep increasing; a shared grant carries the last exclusive token.
	qs, bs := []*lockengine.Queue{q1, q2}, []*Backend{b1, b2}
	for i := range 20 {
		q := qs[i%2]
		if i%5 == 4 {
			s := acquire(t, q, "swept", lockengine.Shared)
			assert.Equal(t, last, s.Token(), "round %d: shared token of a recreated file", i)
			require.NoError(t, s.Release())
		} else {
			l := acquire(t, q, "swept", lockengine.Exclusive)
			require.Greater(t, l.Token(), last, "round %d: token after the file was swept", i)
			last = l.Token()
			require.NoError(t, l.Release())
		}
		sweepGone(t, bs[(i+1)%2], lockPath(dir, "swept"))
	}
	for _, l := range []*lockengine.Lease{heldHere, heldThere, heldShared} {
		require.NoError(t, l.Release())
	}
	for _, n := range heldNames {
		sweepGone(t, b1, lockPath(dir, n))
	}
	entries, err := os.ReadDir(filepath.Join(dir, "locks"))
	require.NoError(t, err)
	assert.Empty(t, entries)
	assert.FileExists(t, filepath.Join(dir, "guard"), "the guard is never removed")
}

// sweepGone sweeps until the lock file at path is gone, at most twice (a
// first sweep may only discard a stale cached descriptor; see
// TestFaultSweepStaleCachedDescriptor).
func sweepGone(t *testing.T, b *Backend, path string) {
	t.Helper()
	for range 2 {
		b.Sweep()
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
	}
	t.Fatalf("two sweeps did not remove the unused lock file %s", path)
}

// TestFaultSweepStaleCachedDescriptor: a backend whose cached descriptor of
// a name is stale (another backend swept the file and it was recreated)
// must still remove the unused file in one sweep.
func TestFaultSweepStaleCachedDescriptor(t *testing.T) {
	dir := t.TempDir()
	b1, q1 := openQueue(t, dir, Options{IdleTTL: time.Nanosecond})
	b2, q2 := openQueue(t, dir, Options{IdleTTL: time.Nanosecond})
	l := acquire(t, q1, "x", lockengine.Exclusive)
	require.NoError(t, l.Release()) // b1 caches a descriptor of file 1
	require.Equal(t, 1, b2.Sweep())
	l = acquire(t, q2, "x", lockengine.Exclusive) // file 2
	require.NoError(t, l.Release())
	assert.Equal(t, 1, b1.Sweep(), "BUG: the sweep tried its stale cached descriptor of the removed file and kept the unused one")
	assert.NoFileExists(t, lockPath(dir, "x"))
}
