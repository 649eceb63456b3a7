// Package enginetest is the conformance suite every lockengine.Engine
// implementation runs: the same table of cases for the local backing
// directory and for etcd.
package enginetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// Factory returns two engines that share one backing store, as two daemons
// sharing a state directory or an etcd cluster would. The factory registers
// their Close with t.Cleanup and creates them with QueueOptions.LockDelay set to LockDelay.
type Factory func(t *testing.T) (a, b lockengine.Engine)

// Cases is the suite, by name. Run runs all of them.
var Cases = map[string]func(t *testing.T, f Factory){
	"ExclusiveExcludes":      testExclusiveExcludes,
	"SharedTogether":         testSharedTogether,
	"FIFOOrder":              testFIFOOrder,
	"SharedBatching":         testSharedBatching,
	"WriterNotStarved":       testWriterNotStarved,
	"CancelWhileWaiting":     testCancelWhileWaiting,
	"CancelRaceNeverLeaks":   testCancelRace,
	"ReleaseIdempotent":      testReleaseIdempotent,
	"TokensStrictlyIncrease": testTokens,
	"TryAcquire":             testTryAcquire,
	"InvalidInput":           testInvalidInput,
	"CrossEngineCounter":     testCrossEngineCounter,
	"CloseEndsEverything":    testClose,
	"Snapshot":               testSnapshot,
	"InspectOwners":          testInspectOwners,
	"BreakPermission":        testBreakPermission,
	"BreakLockDelay":         testBreakLockDelay,
	"BreakWhoMay":            testBreakWhoMay,
	"BreakSemaphoreDelay":    testBreakSemaphoreDelay,
	"BreakDelayNotExtended":  testBreakDelayNotExtended,
	"SemaphoreLimit":         testSemaphoreLimit,
	"SemaphoreLimitChanges":  testSemaphoreLimitChanges,
}

// LockDelay is the lock-delay factories configure.
const LockDelay = 300 * time.Millisecond

// Run runs every case as a subtest.
func Run(t *testing.T, f Factory) {
	for name, c := range Cases {
		t.Run(name, func(t *testing.T) { c(t, f) })
	}
}

// Timeout bounds every wait in the suite; generous, for loaded machines.
const Timeout = 20 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

// opCtx is the context of one operation of a case that makes many in a
// loop: each gets the whole Timeout. One context for the whole loop would
// make the loop's total time the bound, which a loaded machine or a slow
// etcd exceeds long before any single wait is stuck.
func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), Timeout)
}

// waitFor polls cond until it holds or Timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, Timeout, time.Millisecond, "timed out waiting for %s", what)
}

func waiters(e lockengine.Engine, name string) int {
	for _, info := range e.Snapshot() {
		if info.Name == name {
			return info.Waiters
		}
	}
	return 0
}

type result struct {
	lease *lockengine.Lease
	err   error
}

// acquireAsync starts Acquire in a goroutine and returns its result channel.
func acquireAsync(ctx context.Context, e lockengine.Engine, name string, m lockengine.Mode) <-chan result {
	ch := make(chan result, 1)
	go func() {
		l, err := e.Acquire(ctx, name, m)
		ch <- result{l, err}
	}()
	return ch
}

// notYet asserts that nothing arrives on ch for a short while. It cannot
// prove a negative; callers pair it with a positive check afterwards.
func notYet(t *testing.T, ch <-chan result, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: got lease=%v err=%v, want still waiting", what, r.lease != nil, r.err)
	case <-time.After(50 * time.Millisecond):
	}
}

func get(t *testing.T, ch <-chan result) *lockengine.Lease {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.lease
	case <-time.After(Timeout):
		t.Fatal("timed out waiting for a grant")
		return nil
	}
}

func mustAcquire(t *testing.T, e lockengine.Engine, name string, m lockengine.Mode) *lockengine.Lease {
	t.Helper()
	l, err := e.Acquire(ctxT(t), name, m)
	require.NoError(t, err)
	return l
}

func testExclusiveExcludes(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	l := mustAcquire(t, a, "x", lockengine.Exclusive)
	for _, e := range []lockengine.Engine{a, b} {
		for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
			_, err := e.TryAcquire(ctx, "x", m)
			require.ErrorIs(t, err, lockengine.ErrWouldBlock)
		}
	}
	ch := acquireAsync(ctx, b, "x", lockengine.Exclusive)
	notYet(t, ch, "exclusive waiter on the other engine")
	require.NoError(t, l.Release())
	l2 := get(t, ch)
	require.NoError(t, l2.Release())
}

func testSharedTogether(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	s1 := mustAcquire(t, a, "x", lockengine.Shared)
	s2 := mustAcquire(t, a, "x", lockengine.Shared)
	s3, err := b.TryAcquire(ctx, "x", lockengine.Shared)
	require.NoError(t, err, "shared holders of two engines share the lock")
	_, err = b.TryAcquire(ctx, "x", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	ch := acquireAsync(ctx, b, "x", lockengine.Exclusive)
	for _, l := range []*lockengine.Lease{s1, s2} {
		notYet(t, ch, "exclusive while shared are held")
		require.NoError(t, l.Release())
	}
	notYet(t, ch, "exclusive while a shared lease of its own engine is held")
	require.NoError(t, s3.Release())
	require.NoError(t, get(t, ch).Release())
}

func testFIFOOrder(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	holder := mustAcquire(t, a, "fifo", lockengine.Exclusive)
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	const n = 8
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := a.Acquire(ctx, "fifo", lockengine.Exclusive)
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			assert.NoError(t, l.Release())
		}()
		waitFor(t, fmt.Sprintf("waiter %d queued", i), func() bool { return waiters(a, "fifo") == i+1 })
	}
	require.NoError(t, holder.Release())
	wg.Wait()
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7}, order, "waiters are granted in arrival order")
}

func testSharedBatching(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	holder := mustAcquire(t, a, "batch", lockengine.Exclusive)
	modes := []lockengine.Mode{lockengine.Shared, lockengine.Shared, lockengine.Exclusive, lockengine.Shared}
	chs := make([]<-chan result, len(modes))
	for i, m := range modes {
		chs[i] = acquireAsync(ctx, a, "batch", m)
		waitFor(t, "queued", func() bool { return waiters(a, "batch") == i+1 })
	}
	require.NoError(t, holder.Release())
	s0, s1 := get(t, chs[0]), get(t, chs[1]) // granted together
	notYet(t, chs[2], "exclusive behind the shared batch")
	notYet(t, chs[3], "shared that arrived after a waiting exclusive")
	require.NoError(t, s0.Release())
	notYet(t, chs[2], "exclusive while one of the batch still holds")
	require.NoError(t, s1.Release())
	e2 := get(t, chs[2])
	notYet(t, chs[3], "shared behind the exclusive")
	require.NoError(t, e2.Release())
	require.NoError(t, get(t, chs[3]).Release())
}

func testWriterNotStarved(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	reader := mustAcquire(t, a, "ws", lockengine.Shared)
	writer := acquireAsync(ctx, a, "ws", lockengine.Exclusive)
	waitFor(t, "writer queued", func() bool { return waiters(a, "ws") == 1 })
	_, err := a.TryAcquire(ctx, "ws", lockengine.Shared)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "a new reader must not overtake a waiting writer")
	late := acquireAsync(ctx, a, "ws", lockengine.Shared)
	notYet(t, late, "late reader")
	require.NoError(t, reader.Release())
	w := get(t, writer)
	notYet(t, late, "late reader while the writer holds")
	require.NoError(t, w.Release())
	require.NoError(t, get(t, late).Release())
}

func testCancelWhileWaiting(t *testing.T, f Factory) {
	a, b := f(t)
	for _, waitOn := range []lockengine.Engine{a, b} {
		holder := mustAcquire(t, a, "cancel", lockengine.Exclusive)
		wctx, cancel := context.WithCancel(ctxT(t))
		ch := acquireAsync(wctx, waitOn, "cancel", lockengine.Exclusive)
		waitFor(t, "waiter queued", func() bool { return waiters(waitOn, "cancel") == 1 })
		next := acquireAsync(ctxT(t), waitOn, "cancel", lockengine.Shared)
		waitFor(t, "second waiter queued", func() bool { return waiters(waitOn, "cancel") == 2 })
		cancel()
		select {
		case r := <-ch:
			require.ErrorIs(t, r.err, context.Canceled)
			require.Nil(t, r.lease)
		case <-time.After(Timeout):
			t.Fatal("cancelled Acquire did not return")
		}
		waitFor(t, "cancelled waiter removed", func() bool { return waiters(waitOn, "cancel") == 1 })
		require.NoError(t, holder.Release())
		require.NoError(t, get(t, next).Release(), "the next waiter is not held up by the abandoned one")
	}
}

func testCancelRace(t *testing.T, f Factory) {
	a, b := f(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := []lockengine.Engine{a, b}[g%2]
			for i := range 150 {
				c, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*50*time.Microsecond)
				l, err := e.Acquire(c, "race", lockengine.Mode(1+(i+g)%2))
				cancel()
				if err == nil {
					assert.NoError(t, l.Release())
				} else if !errors.Is(err, context.DeadlineExceeded) {
					assert.NoError(t, err)
				}
			}
		}()
	}
	wg.Wait()
	// Nothing leaked: both engines can take the name exclusively at once.
	for _, e := range []lockengine.Engine{a, b} {
		var l *lockengine.Lease
		waitFor(t, "name free", func() bool {
			ctx, cancel := opCtx()
			defer cancel()
			var err error
			l, err = e.TryAcquire(ctx, "race", lockengine.Exclusive)
			return err == nil
		})
		require.NoError(t, l.Release())
		waitFor(t, "entry gone", func() bool { return len(e.Snapshot()) == 0 })
	}
}

func testReleaseIdempotent(t *testing.T, f Factory) {
	a, _ := f(t)
	l := mustAcquire(t, a, "rel", lockengine.Exclusive)
	require.NoError(t, l.Err())
	select {
	case <-l.Done():
		t.Fatal("Done closed while held")
	default:
	}
	require.NoError(t, l.Release())
	require.NoError(t, l.Release())
	<-l.Done()
	require.ErrorIs(t, l.Err(), lockengine.ErrReleased)
	require.False(t, l.Lost())
	// The second Release did not release someone else's grant.
	l2 := mustAcquire(t, a, "rel", lockengine.Exclusive)
	require.NoError(t, l.Release())
	_, err := a.TryAcquire(ctxT(t), "rel", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	require.NoError(t, l2.Release())
}

func testTokens(t *testing.T, f Factory) {
	a, b := f(t)
	var last uint64
	for i := range 20 {
		e := []lockengine.Engine{a, b}[i%2]
		l := mustAcquire(t, e, "tok", lockengine.Exclusive)
		require.Greater(t, l.Token(), last, "exclusive grant %d", i)
		last = l.Token()
		require.NoError(t, l.Release())
		s := mustAcquire(t, []lockengine.Engine{a, b}[(i+1)%2], "tok", lockengine.Shared)
		require.GreaterOrEqual(t, s.Token(), last, "shared grant carries the current generation")
		require.NoError(t, s.Release())
	}
}

func testTryAcquire(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	l, err := a.TryAcquire(ctx, "try", lockengine.Exclusive)
	require.NoError(t, err)
	ch := acquireAsync(ctx, a, "try", lockengine.Shared)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "try") == 1 })
	require.NoError(t, l.Release())
	s := get(t, ch)
	// A shared holder exists, but a compatible TryAcquire still succeeds
	// when nobody waits.
	s2, err := a.TryAcquire(ctx, "try", lockengine.Shared)
	require.NoError(t, err)
	require.NoError(t, s.Release())
	require.NoError(t, s2.Release())
}

func testInvalidInput(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	for _, name := range []string{"", ".", "..", "/", "a/", "/a", "a//b", "a/./b", "a/../b", "a\x00b"} {
		_, err := a.Acquire(ctx, name, lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrInvalidName, "%q", name)
		_, err = a.TryAcquire(ctx, name, lockengine.Shared)
		require.ErrorIs(t, err, lockengine.ErrInvalidName, "%q", name)
	}
	_, err := a.Acquire(ctx, strings.Repeat("n", lockengine.MaxNameLen+1), lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrNameTooLong)
	l := mustAcquire(t, a, strings.Repeat("n", lockengine.MaxNameLen), lockengine.Exclusive)
	require.NoError(t, l.Release())
	testNameLimits(t, a)
	_, err = a.Acquire(ctx, "m", lockengine.Mode(0))
	require.ErrorIs(t, err, lockengine.ErrInvalidMode)
	_, err = a.Acquire(ctx, "m", lockengine.Mode(3))
	require.ErrorIs(t, err, lockengine.ErrInvalidMode)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = a.Acquire(cctx, "m", lockengine.Exclusive)
	require.ErrorIs(t, err, context.Canceled)
}

// testNameLimits checks MaxDepth, MaxPathLen and MaxNameLen on nested
// names. The directories exist (MaxDepth of them), so a name past a limit
// would be grantable were the limit not enforced.
func testNameLimits(t *testing.T, e lockengine.Engine) {
	ctx := ctxT(t)
	comps := make([]string, lockengine.MaxDepth)
	path := ""
	for i := range comps {
		comps[i] = fmt.Sprintf("d%02d", i)
		path = lockengine.JoinName(path, comps[i])
		mustMkdir(t, e, path)
	}
	deepest := strings.Join(comps, "/")        // MaxDepth components: a directory
	deepName := deepest[:len(deepest)-3] + "n" // MaxDepth components: a name
	long := strings.Repeat("x", lockengine.MaxNameLen+1)
	// Components of 240 bytes: 17 of them are MaxPathLen+1 bytes, each
	// component and the depth within their limits.
	pathComp := strings.Repeat("p", 240)
	tooLongPath := strings.Repeat(pathComp+"/", 16) + pathComp
	require.Len(t, tooLongPath, lockengine.MaxPathLen+1)
	for _, name := range []string{
		deepest + "/n",               // MaxDepth+1 components
		tooLongPath,                  // longer than MaxPathLen
		comps[0] + "/" + long,        // a long last component
		comps[0] + "/" + long + "/n", // a long component in the middle
		long + "/" + comps[0],        // a long first component
	} {
		_, err := e.Acquire(ctx, name, lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrNameTooLong, "Acquire %.60q...", name)
		_, err = e.TryAcquire(ctx, name, lockengine.Shared)
		require.ErrorIs(t, err, lockengine.ErrNameTooLong, "TryAcquire %.60q...", name)
	}
	require.Len(t, strings.Split(deepName, "/"), lockengine.MaxDepth)
	l := mustAcquire(t, e, deepName, lockengine.Exclusive)
	require.NoError(t, l.Release())
}

func testCrossEngineCounter(t *testing.T, f Factory) {
	a, b := f(t)
	var (
		inside, readers atomic.Int32
		counter         int // guarded by the lock under test
		wg              sync.WaitGroup
	)
	const perG = 100
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := []lockengine.Engine{a, b}[g%2]
			for i := range perG {
				mode := lockengine.Exclusive
				if (i+g)%3 == 0 {
					mode = lockengine.Shared
				}
				ctx, cancel := opCtx()
				l, err := e.Acquire(ctx, "counter", mode)
				cancel()
				if !assert.NoError(t, err) {
					return
				}
				if mode == lockengine.Exclusive {
					assert.Equal(t, int32(1), inside.Add(1), "two exclusive holders")
					assert.Zero(t, readers.Load(), "exclusive holder with readers")
					c := counter
					time.Sleep(time.Microsecond)
					counter = c + 1
					inside.Add(-1)
				} else {
					readers.Add(1)
					assert.Zero(t, inside.Load(), "reader with an exclusive holder")
					readers.Add(-1)
				}
				assert.NoError(t, l.Release())
			}
		}()
	}
	wg.Wait()
	want := 0
	for g := range 6 {
		for i := range perG {
			if (i+g)%3 != 0 {
				want++
			}
		}
	}
	require.Equal(t, want, counter)
}

func testClose(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	l := mustAcquire(t, a, "close", lockengine.Exclusive)
	ch := acquireAsync(ctx, a, "close", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "close") == 1 })
	require.NoError(t, a.Close())
	r := <-ch
	require.ErrorIs(t, r.err, lockengine.ErrClosed)
	<-l.Done()
	require.ErrorIs(t, l.Err(), lockengine.ErrClosed)
	require.True(t, l.Lost())
	require.NoError(t, l.Release())
	_, err := a.Acquire(ctx, "close", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrClosed)
	require.NoError(t, a.Close(), "Close is idempotent")
}

func testSnapshot(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	require.Empty(t, a.Snapshot())
	x := mustAcquire(t, a, "x", lockengine.Exclusive)
	s1 := mustAcquire(t, a, "s", lockengine.Shared)
	s2 := mustAcquire(t, a, "s", lockengine.Shared)
	ch := acquireAsync(ctx, a, "x", lockengine.Shared)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "x") == 1 })
	snap := a.Snapshot()
	require.Len(t, snap, 2)
	require.Equal(t, "s", snap[0].Name)
	require.Equal(t, lockengine.Shared, snap[0].Mode)
	require.Equal(t, 2, snap[0].Holders)
	require.Equal(t, "x", snap[1].Name)
	require.Equal(t, lockengine.Exclusive, snap[1].Mode)
	require.Equal(t, 1, snap[1].Holders)
	require.Equal(t, 1, snap[1].Waiters)
	require.Equal(t, x.Token(), snap[1].Token)
	require.False(t, snap[1].Since.IsZero())
	require.NoError(t, x.Release())
	require.NoError(t, get(t, ch).Release())
	require.NoError(t, s1.Release())
	require.NoError(t, s2.Release())
	waitFor(t, "snapshot empty", func() bool { return len(a.Snapshot()) == 0 })
}

func testInspectOwners(t *testing.T, f Factory) {
	a, _ := f(t)
	alice := lockengine.Owner{UID: 1000, GID: 1000, PID: 42}
	bob := lockengine.Owner{UID: 1001, GID: 1001, PID: 43}
	_, ok := a.Inspect("own")
	require.False(t, ok)
	l, err := a.Acquire(lockengine.WithOwner(ctxT(t), alice), "own", lockengine.Exclusive)
	require.NoError(t, err)
	require.Equal(t, alice, l.Owner())
	ch := acquireAsync(lockengine.WithOwner(ctxT(t), bob), a, "own", lockengine.Shared)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "own") == 1 })
	info, ok := a.Inspect("own")
	require.True(t, ok)
	require.Equal(t, lockengine.StateHeld, info.State)
	require.Len(t, info.Leases, 1)
	require.Equal(t, alice, info.Leases[0].Owner)
	require.Equal(t, l.Token(), info.Leases[0].Token)
	require.Equal(t, []lockengine.Owner{bob}, info.Waiting)
	require.False(t, info.Heartbeat.IsZero())
	require.NoError(t, l.Release())
	s := get(t, ch)
	require.Equal(t, bob, s.Owner())
	require.NoError(t, s.Release())
}

func testBreakPermission(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	alice := lockengine.Owner{UID: 1000, GID: 1000, PID: 42}
	require.ErrorIs(t, a.Break(ctx, "brk", alice), lockengine.ErrNotHeld)
	l, err := a.Acquire(lockengine.WithOwner(ctx, alice), "brk", lockengine.Exclusive)
	require.NoError(t, err)
	err = a.Break(ctx, "brk", lockengine.Owner{UID: 1001})
	require.ErrorIs(t, err, lockengine.ErrPermission)
	require.NoError(t, l.Err(), "a refused break leaves the lease alone")
	require.NoError(t, a.Break(ctx, "brk", alice), "the holder's uid may break")
	<-l.Done()
	require.ErrorIs(t, l.Err(), lockengine.ErrLost)
	require.ErrorIs(t, l.Err(), lockengine.ErrBroken)
	info, ok := a.Inspect("brk")
	require.True(t, ok)
	var lost []lockengine.LeaseInfo
	for _, li := range info.Leases {
		if li.Lost {
			lost = append(lost, li)
		}
	}
	require.Len(t, lost, 1, "the broken lease shows as lost until its holder releases it")
	require.Equal(t, alice, lost[0].Owner)
	require.NoError(t, l.Release())
}

func testBreakLockDelay(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	l := mustAcquire(t, a, "delay", lockengine.Exclusive)
	local := acquireAsync(ctx, a, "delay", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "delay") == 1 })
	broken := time.Now()
	require.NoError(t, a.Break(ctx, "delay", lockengine.Owner{UID: 0}))
	<-l.Done()
	require.ErrorIs(t, l.Err(), lockengine.ErrBroken)
	_, err := b.TryAcquire(ctx, "delay", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "other engines wait for the lock-delay too")
	next := get(t, local)
	require.GreaterOrEqual(t, time.Since(broken), LockDelay, "the waiter proceeds only after the lock-delay")
	require.Greater(t, next.Token(), l.Token(), "a break bumps the token")
	require.NoError(t, next.Release())
	require.NoError(t, l.Release())
}

// Root may break any lock; anyone else only a lock whose every current
// lease is theirs. A co-holder of a shared lock (or of a semaphore) may
// not end the other holders' leases.
func testBreakWhoMay(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	root := lockengine.Owner{UID: 0, PID: 1}
	alice := lockengine.Owner{UID: 1000, GID: 1000, PID: 42}
	bob := lockengine.Owner{UID: 1001, GID: 1001, PID: 43}

	// Shared, root and alice: alice may not break it.
	r, err := a.Acquire(lockengine.WithOwner(ctx, root), "shr", lockengine.Shared)
	require.NoError(t, err)
	s, err := a.Acquire(lockengine.WithOwner(ctx, alice), "shr", lockengine.Shared)
	require.NoError(t, err)
	require.ErrorIs(t, a.Break(ctx, "shr", alice), lockengine.ErrPermission, "a co-holder may not break")
	require.ErrorIs(t, a.Break(ctx, "shr", bob), lockengine.ErrPermission, "a stranger may not break")
	require.NoError(t, r.Err())
	require.NoError(t, s.Err())
	require.NoError(t, a.Break(ctx, "shr", root), "root may break")
	<-r.Done()
	<-s.Done()
	require.ErrorIs(t, s.Err(), lockengine.ErrBroken)
	require.NoError(t, r.Release())
	require.NoError(t, s.Release())

	// Semaphore slots of alice and bob: neither may break.
	require.NoError(t, a.SetLimit("slots", 2))
	s1, err := a.Acquire(lockengine.WithOwner(ctx, alice), "slots", lockengine.Exclusive)
	require.NoError(t, err)
	s2, err := a.Acquire(lockengine.WithOwner(ctx, bob), "slots", lockengine.Exclusive)
	require.NoError(t, err)
	require.ErrorIs(t, a.Break(ctx, "slots", alice), lockengine.ErrPermission)
	require.ErrorIs(t, a.Break(ctx, "slots", bob), lockengine.ErrPermission)
	require.NoError(t, s1.Err())
	require.NoError(t, s2.Release(), "a co-holder releases its own slot instead")
	require.NoError(t, a.Break(ctx, "slots", alice), "alice is now the lone holder")
	<-s1.Done()
	require.ErrorIs(t, s1.Err(), lockengine.ErrBroken)
	require.NoError(t, s1.Release())

	// A lone holder of two shared leases may break its own lock.
	x1, err := a.Acquire(lockengine.WithOwner(ctx, bob), "own2", lockengine.Shared)
	require.NoError(t, err)
	x2, err := a.Acquire(lockengine.WithOwner(ctx, bob), "own2", lockengine.Shared)
	require.NoError(t, err)
	require.NoError(t, a.Break(ctx, "own2", bob))
	<-x1.Done()
	<-x2.Done()
	require.NoError(t, x1.Release())
	require.NoError(t, x2.Release())
}

// Breaking a semaphore keeps every waiter out for the lock-delay, even
// though the name admits more exclusive holders than the engine's own.
func testBreakSemaphoreDelay(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	require.NoError(t, a.SetLimit("semd", 3))
	l := mustAcquire(t, a, "semd", lockengine.Exclusive)
	broken := time.Now()
	require.NoError(t, a.Break(ctx, "semd", lockengine.Owner{UID: 0}))
	<-l.Done()
	require.ErrorIs(t, l.Err(), lockengine.ErrBroken)
	if time.Since(broken) < LockDelay/2 {
		_, err := a.TryAcquire(ctx, "semd", lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrWouldBlock, "no slot during the lock-delay")
	}
	next := mustAcquire(t, a, "semd", lockengine.Exclusive)
	require.GreaterOrEqual(t, time.Since(broken), LockDelay, "a slot only after the lock-delay")
	require.Greater(t, next.Token(), l.Token())
	require.NoError(t, next.Release())
	require.NoError(t, l.Release())
}

// A second break during the lock-delay is refused (ErrLockDelay), even by
// root or by the user whose break started it, so it cannot extend the
// delay.
func testBreakDelayNotExtended(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	alice := lockengine.Owner{UID: 1000, GID: 1000, PID: 42}
	l, err := a.Acquire(lockengine.WithOwner(ctx, alice), "ext", lockengine.Exclusive)
	require.NoError(t, err)
	w := acquireAsync(ctx, a, "ext", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "ext") == 1 })
	broken := time.Now()
	require.NoError(t, a.Break(ctx, "ext", alice), "a lone holder may break its own lock")
	<-l.Done()
	for _, by := range []lockengine.Owner{alice, {UID: 0}} {
		err := a.Break(ctx, "ext", by)
		if time.Since(broken) < LockDelay/2 {
			require.ErrorIs(t, err, lockengine.ErrLockDelay, "uid %d breaks during the lock-delay", by.UID)
		}
	}
	next := get(t, w)
	waited := time.Since(broken)
	require.GreaterOrEqual(t, waited, LockDelay)
	require.Less(t, waited, Timeout/2)
	require.NoError(t, next.Release())
	require.NoError(t, l.Release())
}

func testSemaphoreLimit(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	require.ErrorIs(t, a.SetLimit("pool", 0), lockengine.ErrInvalidLimit)
	require.NoError(t, a.SetLimit("pool", 3))
	require.Equal(t, 3, a.Limit("pool"))
	require.Equal(t, 1, a.Limit("other"))
	var held []*lockengine.Lease
	var last uint64
	for range 3 {
		l, err := a.TryAcquire(ctx, "pool", lockengine.Exclusive)
		require.NoError(t, err, "up to the limit, exclusive holders coexist")
		require.Greater(t, l.Token(), last, "each holder has a token of its own")
		last = l.Token()
		held = append(held, l)
	}
	_, err := a.TryAcquire(ctx, "pool", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "beyond the limit")
	_, err = a.TryAcquire(ctx, "pool", lockengine.Shared)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "shared still excludes exclusive")
	_, err = b.TryAcquire(ctx, "pool", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "another engine waits for all holders")
	// FIFO beyond the limit.
	var (
		order  []int
		leases []*lockengine.Lease
		mu     sync.Mutex
		wg     sync.WaitGroup
	)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := a.Acquire(ctx, "pool", lockengine.Exclusive)
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			order = append(order, i)
			leases = append(leases, l)
			mu.Unlock()
		}()
		waitFor(t, "waiter queued", func() bool { return waiters(a, "pool") == i+1 })
	}
	for i, l := range held {
		require.NoError(t, l.Release())
		waitFor(t, "one waiter admitted", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(order) == i+1
		})
	}
	wg.Wait()
	require.Equal(t, []int{0, 1, 2}, order)
	info, ok := a.Inspect("pool")
	require.True(t, ok)
	require.Equal(t, 3, info.Holders)
	tokens := map[uint64]bool{}
	for _, li := range info.Leases {
		tokens[li.Token] = true
	}
	require.Len(t, tokens, 3, "the holders' tokens differ")
	for _, l := range leases {
		require.NoError(t, l.Release())
	}
}

func testSemaphoreLimitChanges(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	require.NoError(t, a.SetLimit("sem", 2))
	l1 := mustAcquire(t, a, "sem", lockengine.Exclusive)
	l2 := mustAcquire(t, a, "sem", lockengine.Exclusive)
	w := acquireAsync(ctx, a, "sem", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "sem") == 1 })
	require.NoError(t, a.SetLimit("sem", 3), "raising the limit admits the waiter")
	l3 := get(t, w)
	require.NoError(t, a.SetLimit("sem", 1), "lowering takes nothing away")
	require.NoError(t, l1.Err())
	require.NoError(t, l3.Err())
	w = acquireAsync(ctx, a, "sem", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(a, "sem") == 1 })
	require.NoError(t, l1.Release())
	notYet(t, w, "two holders remain, limit 1")
	require.NoError(t, l2.Release())
	notYet(t, w, "one holder remains, limit 1")
	require.NoError(t, l3.Release())
	require.NoError(t, get(t, w).Release())
}
