package dirlock

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// noPoll makes a waiter's timers useless within a test: it is granted
// promptly only if the kernel wakes it.
var noPoll = Options{PollMin: time.Hour, PollMax: time.Hour, WakePoll: time.Hour, SweepInterval: -1}

func openBackend(t *testing.T, dir string, opts Options) *Backend {
	t.Helper()
	b, err := Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// waiterMarked reports whether a waiter mark is on name's lock file.
func waiterMarked(t *testing.T, dir, name string) bool {
	t.Helper()
	fd, err := unix.Open(lockPath(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	require.NoError(t, err)
	defer closeFd(fd)
	_, ok := peekMark(fd)
	return ok
}

type lockResult struct {
	h   lockengine.Hold
	err error
}

func lockAsync(ctx context.Context, b *Backend, name string, mode lockengine.Mode) <-chan lockResult {
	c := make(chan lockResult, 1)
	go func() {
		h, err := b.Lock(ctx, name, mode, nil)
		c <- lockResult{h, err}
	}()
	return c
}

// TestWakeOnRelease: a waiter of a name that another Backend holds is
// granted when the holder unlocks, with every timer of the waiter set to
// an hour: the kernel woke it. Its mark is gone once it is granted.
func TestWakeOnRelease(t *testing.T) {
	ex, sh := lockengine.Exclusive, lockengine.Shared
	for _, c := range []struct{ held, want lockengine.Mode }{{ex, ex}, {ex, sh}, {sh, ex}} {
		t.Run(c.held.String()+"-"+c.want.String(), func(t *testing.T) {
			dir := t.TempDir()
			b1, b2 := openBackend(t, dir, noPoll), openBackend(t, dir, noPoll)
			h1, err := b1.TryLock(context.Background(), "x", c.held, nil)
			require.NoError(t, err)
			res := lockAsync(testCtx(t, 5*time.Minute), b2, "x", c.want)
			eventually(t, 10*time.Second, "the waiter's mark", func() bool { return waiterMarked(t, dir, "x") })
			select {
			case r := <-res:
				t.Fatalf("granted while held: %v", r.err)
			default:
			}
			require.NoError(t, h1.Unlock())
			select {
			case r := <-res:
				require.NoError(t, r.err)
				assert.False(t, waiterMarked(t, dir, "x"), "the mark outlived the wait")
				require.NoError(t, r.h.Unlock())
			case <-time.After(time.Minute):
				t.Fatal("the waiter was not woken by the release")
			}
		})
	}
}

// TestWakeOnHolderExit: a holder in another process that dies without
// unlocking (SIGKILL) wakes the waiter too: the kernel's last close of
// its descriptor is the announcement.
func TestWakeOnHolderExit(t *testing.T) {
	dir := t.TempDir()
	p := startHelper(t, "contend", helperArgs{Dir: dir, Name: "x"})
	p.expect(t, "waiting", 30*time.Second)
	p.expect(t, "granted", 30*time.Second)
	b := openBackend(t, dir, noPoll)
	res := lockAsync(testCtx(t, 5*time.Minute), b, "x", lockengine.Exclusive)
	eventually(t, 10*time.Second, "the waiter's mark", func() bool { return waiterMarked(t, dir, "x") })
	p.signal(t, syscall.SIGKILL)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.NoError(t, r.h.Unlock())
	case <-time.After(time.Minute):
		t.Fatal("the waiter was not woken by the holder's death")
	}
}

// TestWakeCancel: a waiter cancelled while it waits for another Backend
// leaves no mark, no watch and, once its Backend is closed, no goroutine.
func TestWakeCancel(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	dir := t.TempDir()
	b1, err := Open(dir, noPoll)
	require.NoError(t, err)
	b2, err := Open(dir, noPoll)
	require.NoError(t, err)
	h1, err := b1.TryLock(context.Background(), "x", lockengine.Exclusive, nil)
	require.NoError(t, err)
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		res := lockAsync(ctx, b2, "x", lockengine.Exclusive)
		eventually(t, 10*time.Second, "the waiter's mark", func() bool { return waiterMarked(t, dir, "x") })
		cancel()
		select {
		case r := <-res:
			require.ErrorIs(t, r.err, context.Canceled)
		case <-time.After(time.Minute):
			t.Fatal("the cancelled waiter did not return")
		}
		assert.False(t, waiterMarked(t, dir, "x"), "a cancelled waiter left its mark")
		w := b2.wake.watcher()
		require.NotNil(t, w)
		w.mu.Lock()
		assert.Empty(t, w.subs, "a cancelled waiter left its watch")
		w.mu.Unlock()
	}
	require.NoError(t, h1.Unlock())
	require.NoError(t, b1.Close())
	require.NoError(t, b2.Close())
	goleak.VerifyNone(t, ignore)
}

// TestWakeFairness: two Queues on two Backends (two daemons), each with two
// goroutines that take the name in turn, and every timer an hour: every
// grant comes from a kernel wake-up or a local handoff, exclusion holds, and
// neither daemon keeps the name to itself (a releaser yields to the other
// daemon's woken waiter instead of handing it to its next local one).
func TestWakeFairness(t *testing.T) {
	// One P, as in a daemon: a releaser's handoff to its next local
	// waiter runs before the other daemon's woken waiter can.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	dir := t.TempDir()
	const total = 300
	var (
		inside  atomic.Int32
		mu      sync.Mutex
		grants  [2]int
		n       int
		wg      sync.WaitGroup
		errOnce sync.Once
		failure error
	)
	fail := func(err error) { errOnce.Do(func() { failure = err }) }
	ctx := testCtx(t, 5*time.Minute)
	for d := range 2 {
		_, q := openQueue(t, dir, noPoll)
		for range 2 {
			wg.Go(func() {
				for {
					l, err := q.Acquire(ctx, "x", lockengine.Exclusive)
					if err != nil {
						fail(err)
						return
					}
					if inside.Add(1) != 1 {
						fail(errors.New("two holders at once"))
					}
					mu.Lock()
					grants[d]++
					n++
					done := n >= total
					mu.Unlock()
					time.Sleep(100 * time.Microsecond)
					inside.Add(-1)
					if err := l.Release(); err != nil {
						fail(err)
						return
					}
					if done {
						return
					}
				}
			})
		}
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(4 * time.Minute):
		t.Fatalf("stalled after %d grants: a waiter was not woken", n)
	}
	require.NoError(t, failure)
	t.Logf("grants per daemon: %v", grants)
	for d, g := range grants {
		share := float64(g) / float64(grants[0]+grants[1])
		// The bound catches a daemon that keeps the name to itself;
		// the near-even split is the benchmark's figure, which a
		// loaded machine skews (75/25 seen with the suite, two CPU
		// burners and a soak running).
		assert.Truef(t, share >= 0.15 && share <= 0.85, "daemon %d got %.0f%% of the grants (%v)", d, 100*share, grants)
	}
}

// TestWakeYieldWindow: a releaser that saw another open file description's
// waiter mark yields the name to that waiter: its own TryLock counts as
// would-block while the mark stays, for at most yieldMax. A waiter that
// let the yield expire (a stopped daemon: the mark stays, nobody takes the
// name) is not yielded to again on the next release.
func TestWakeYieldWindow(t *testing.T) {
	defer func(d time.Duration) { yieldMax = d }(yieldMax)
	yieldMax = 300 * time.Millisecond
	dir := t.TempDir()
	b1 := openBackend(t, dir, noPoll)
	ctx := testCtx(t, 5*time.Minute)
	// The first TryLock must come back within yieldMax of the release
	// for its failure to say anything; a machine too slow for that gets
	// another round on a fresh name.
	for round := 0; ; round++ {
		name := fmt.Sprintf("x%d", round)
		h, err := b1.TryLock(ctx, name, lockengine.Exclusive, nil)
		require.NoError(t, err)
		// The stopped waiter of another daemon: a marked descriptor that
		// never takes the name.
		fd, err := unix.Open(lockPath(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		t.Cleanup(func() { closeFd(fd) })
		require.NoError(t, setMark(fd, markID()))
		require.True(t, waiterMarked(t, dir, name))

		released := time.Now()
		require.NoError(t, h.Unlock())
		h, err = b1.TryLock(ctx, name, lockengine.Exclusive, nil)
		if err == nil && time.Since(released) >= yieldMax {
			require.NoError(t, h.Unlock())
			require.Less(t, round, 5, "TryLock never came back within yieldMax (%v) of the release", yieldMax)
			t.Logf("round %d: TryLock took longer than yieldMax; again", round)
			continue
		}
		require.ErrorIs(t, err, lockengine.ErrWouldBlock, "TryLock right after a release to a marked waiter")

		// The yield ends after yieldMax although the mark stays.
		for {
			h, err = b1.TryLock(ctx, name, lockengine.Exclusive, nil)
			if err == nil {
				break
			}
			require.ErrorIs(t, err, lockengine.ErrWouldBlock)
			require.Less(t, time.Since(released), time.Minute, "the yield to a waiter that never takes the name did not end")
			time.Sleep(10 * time.Millisecond)
		}
		require.GreaterOrEqual(t, time.Since(released), yieldMax, "granted before the yield ended")
		require.True(t, waiterMarked(t, dir, name), "the stale mark is gone: the test proves nothing")

		// The same stale mark at the next release: no yield.
		require.NoError(t, h.Unlock())
		h, err = b1.TryLock(ctx, name, lockengine.Exclusive, nil)
		require.NoError(t, err, "yielded again to a waiter that let a yield expire")
		require.NoError(t, h.Unlock())
		return
	}
}

// TestWakeSafetyPoll: a holder that releases without announcing it
// (another program: flock(LOCK_UN) and no close, so no inotify event) is
// still noticed by a waiter that the kernel would wake, through WakePoll,
// with every other timer of the waiter an hour.
func TestWakeSafetyPoll(t *testing.T) {
	dir := t.TempDir()
	b := openBackend(t, dir, Options{PollMin: time.Hour, PollMax: time.Hour, WakePoll: 50 * time.Millisecond, SweepInterval: -1})
	// The lock file, as the backend makes it.
	h, err := b.TryLock(context.Background(), "x", lockengine.Exclusive, nil)
	require.NoError(t, err)
	require.NoError(t, h.Unlock())

	fd, err := unix.Open(lockPath(dir, "x"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer closeFd(fd)
	require.NoError(t, unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB))
	res := lockAsync(testCtx(t, 5*time.Minute), b, "x", lockengine.Exclusive)
	// Marked: the waiter waits for the kernel, polling every WakePoll.
	eventually(t, 10*time.Second, "the waiter's mark", func() bool { return waiterMarked(t, dir, "x") })
	select {
	case r := <-res:
		t.Fatalf("granted while another program holds the name: %v", r.err)
	default:
	}
	require.NoError(t, unix.Flock(fd, unix.LOCK_UN)) // no close: no event
	select {
	case r := <-res:
		require.NoError(t, r.err)
		require.NoError(t, r.h.Unlock())
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter did not notice an unannounced release")
	}
}
