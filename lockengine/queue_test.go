package lockengine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Queue invariants that need no real backend, on fakeBackend.

// timeout bounds every wait: generous, for loaded machines.
const timeout = 20 * time.Second

func newTestQueue(t *testing.T, opts QueueOptions) (*Queue, *fakeBackend) {
	t.Helper()
	b := newFakeBackend()
	q := NewQueue(b, opts)
	t.Cleanup(func() {
		require.NoError(t, q.Close())
		require.Empty(t, b.violationList(), "the Queue broke its promise to the backend")
	})
	return q, b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, timeout, time.Millisecond, "timed out waiting for %s", what)
}

func queued(q *Queue, name string) int {
	info, _ := q.Inspect(name)
	return info.Waiters
}

type acquired struct {
	l   *Lease
	err error
}

func acquireAsync(ctx context.Context, q *Queue, name string, m Mode) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		l, err := q.Acquire(ctx, name, m)
		ch <- acquired{l, err}
	}()
	return ch
}

func granted(t *testing.T, ch <-chan acquired) *Lease {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.l
	case <-time.After(timeout):
		t.Fatal("timed out waiting for a grant")
		return nil
	}
}

func stillWaiting(t *testing.T, ch <-chan acquired, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: got lease=%v err=%v, want still waiting", what, r.l != nil, r.err)
	case <-time.After(30 * time.Millisecond):
	}
}

// Many goroutines acquire, try, give up, release and lose a few names
// while the names are held elsewhere now and then: the backend never sees
// two calls in progress or two holds outstanding for a name, and when it
// is over nothing is held or in progress.
func TestQueueOneCallOneHoldPerName(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{LockDelay: NoLockDelay})
	ctx := testCtx(t)
	names := []string{"a", "b", "c"}
	stop := make(chan struct{})
	togglerDone := make(chan struct{})
	go func() { // holds names elsewhere for a moment, now and then
		defer close(togglerDone)
		r := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				for _, n := range names {
					b.unblock(n)
				}
				return
			default:
			}
			n := names[r.IntN(len(names))]
			b.block(n)
			time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
			b.unblock(n)
			time.Sleep(time.Duration(r.IntN(200)) * time.Microsecond)
		}
	}()
	forgetterDone := make(chan struct{})
	go func() { // drops idle entries all along, as the daemon does every 30 s
		defer close(forgetterDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			q.ForgetIdle()
			time.Sleep(50 * time.Microsecond)
		}
	}()
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 300 {
				name := names[r.IntN(len(names))]
				mode := Mode(1 + r.IntN(2))
				var (
					l   *Lease
					err error
				)
				switch r.IntN(4) {
				case 0:
					l, err = q.TryAcquire(ctx, name, mode)
					if errors.Is(err, ErrWouldBlock) {
						continue
					}
				case 1:
					c, cancel := context.WithTimeout(ctx, time.Duration(r.IntN(300))*time.Microsecond)
					l, err = q.Acquire(c, name, mode)
					cancel()
					if errors.Is(err, context.DeadlineExceeded) {
						continue
					}
				default:
					l, err = q.Acquire(ctx, name, mode)
				}
				if err != nil {
					errs <- fmt.Errorf("acquire %s %v: %w", name, mode, err)
					return
				}
				if r.IntN(10) == 0 {
					if h := b.hold(name); h != nil {
						h.lose()
					}
				}
				_ = l.Release()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-togglerDone
	<-forgetterDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually(t, "backend idle", b.idle)
	eventually(t, "queue empty", func() bool { return len(q.Snapshot()) == 0 })
	require.Empty(t, b.violationList())
}

// Waiters are granted in arrival order once the name is freed elsewhere,
// with one backend call waiting on their behalf, not one each.
func TestQueueFIFO(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	b.block("f")
	const n = 6
	chs := make([]<-chan acquired, n)
	for i := range n {
		chs[i] = acquireAsync(ctx, q, "f", Exclusive)
		eventually(t, fmt.Sprintf("waiter %d queued", i), func() bool { return queued(q, "f") == i+1 })
	}
	eventually(t, "the head's Lock waiting", func() bool { return b.waitingLocks("f") == 1 })
	b.unblock("f")
	var last uint64
	for i := range n {
		l := granted(t, chs[i])
		require.Greater(t, l.Token(), last, "grant %d", i)
		last = l.Token()
		for j := i + 1; j < n; j++ {
			select {
			case r := <-chs[j]:
				t.Fatalf("waiter %d granted while waiter %d holds (err %v)", j, i, r.err)
			default:
			}
		}
		require.NoError(t, l.Release())
	}
	eventually(t, "backend idle", b.idle)
}

// Consecutive shared waiters at the head are granted together under one
// hold; a shared request behind a waiting exclusive one waits for it.
func TestQueueSharedBatching(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	b.block("s")
	modes := []Mode{Shared, Shared, Exclusive, Shared, Shared}
	chs := make([]<-chan acquired, len(modes))
	for i, m := range modes {
		chs[i] = acquireAsync(ctx, q, "s", m)
		eventually(t, "queued", func() bool { return queued(q, "s") == i+1 })
	}
	b.unblock("s")
	s0, s1 := granted(t, chs[0]), granted(t, chs[1])
	require.Equal(t, s0.Token(), s1.Token(), "one grant for the batch")
	info, ok := q.Inspect("s")
	require.True(t, ok)
	require.Equal(t, 2, info.Holders)
	require.Equal(t, 3, info.Waiters)
	stillWaiting(t, chs[2], "exclusive behind the batch")
	stillWaiting(t, chs[3], "shared behind a waiting exclusive")
	require.NoError(t, s0.Release())
	stillWaiting(t, chs[2], "exclusive while one of the batch holds")
	require.NoError(t, s1.Release())
	x := granted(t, chs[2])
	require.Greater(t, x.Token(), s0.Token())
	stillWaiting(t, chs[3], "shared while the exclusive holds")
	require.NoError(t, x.Release())
	s3, s4 := granted(t, chs[3]), granted(t, chs[4])
	require.Equal(t, s3.Token(), s4.Token())
	require.NoError(t, s3.Release())
	require.NoError(t, s4.Release())
	eventually(t, "backend idle", b.idle)
}

// A waiter whose context ends leaves nothing: no queue entry, no backend
// call, no hold, also when the cancellation races with the grant.
func TestQueueCancelledWaiterLeavesNothing(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	b.block("c")
	wctx, cancel := context.WithCancel(testCtx(t))
	ch := acquireAsync(wctx, q, "c", Exclusive)
	eventually(t, "the waiter's Lock waiting", func() bool { return b.waitingLocks("c") == 1 })
	cancel()
	select {
	case r := <-ch:
		require.ErrorIs(t, r.err, context.Canceled)
		require.Nil(t, r.l)
	case <-time.After(timeout):
		t.Fatal("cancelled Acquire did not return")
	}
	eventually(t, "backend idle", b.idle)
	eventually(t, "queue empty", func() bool { return len(q.Snapshot()) == 0 })
	b.unblock("c")
	l, err := q.TryAcquire(testCtx(t), "c", Exclusive)
	require.NoError(t, err)
	require.NoError(t, l.Release())

	// Cancellation racing with the grant.
	for i := range 200 {
		b.block("r")
		wctx, cancel := context.WithCancel(testCtx(t))
		ch := acquireAsync(wctx, q, "r", Mode(1+i%2))
		eventually(t, "the waiter's Lock waiting", func() bool { return b.waitingLocks("r") == 1 })
		unblocked := make(chan struct{})
		go func() {
			defer close(unblocked)
			b.unblock("r")
		}()
		cancel()
		r := <-ch
		<-unblocked
		if r.err == nil {
			require.NoError(t, r.l.Release())
		} else {
			require.ErrorIs(t, r.err, context.Canceled)
		}
		eventually(t, "backend idle", b.idle)
		eventually(t, "queue empty", func() bool { return len(q.Snapshot()) == 0 })
	}
}

// countObserver counts events per kind.
type countObserver struct {
	granted, released, lost atomic.Int32
}

func (o *countObserver) Granted(string, Mode, time.Duration)  { o.granted.Add(1) }
func (o *countObserver) Released(string, Mode, time.Duration) { o.released.Add(1) }
func (o *countObserver) Lost(string, Mode, error)             { o.lost.Add(1) }

// A hold reported lost ends every lease of its group once, with ErrLost,
// even when the backend reports it twice; the hold is given back, the
// leases show as lost until released, and the next waiter is granted.
func TestQueueLostEndsGroupOnce(t *testing.T) {
	obs := &countObserver{}
	q, b := newTestQueue(t, QueueOptions{Observer: obs})
	ctx := testCtx(t)
	leases := make([]*Lease, 3)
	for i := range leases {
		var err error
		leases[i], err = q.Acquire(ctx, "g", Shared)
		require.NoError(t, err)
	}
	w := acquireAsync(ctx, q, "g", Exclusive)
	eventually(t, "writer queued", func() bool { return queued(q, "g") == 1 })
	h := b.hold("g")
	require.NotNil(t, h)
	ends := make([]int, len(leases))
	var wg sync.WaitGroup
	for i, l := range leases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-l.Done()
			ends[i]++
		}()
	}
	lostErr := fmt.Errorf("fake: lock %q: %w", "g", ErrLost)
	h.valid.Store(false)
	h.lost(lostErr)
	h.lost(lostErr) // a second report changes nothing
	wg.Wait()
	for i, l := range leases {
		require.Equal(t, 1, ends[i])
		require.ErrorIs(t, l.Err(), ErrLost, "lease %d", i)
		require.True(t, l.Lost())
	}
	require.Equal(t, int32(len(leases)), obs.lost.Load(), "one Lost event per lease")
	x := granted(t, w)
	require.Greater(t, x.Token(), leases[0].Token())
	info, ok := q.Inspect("g")
	require.True(t, ok)
	lost := 0
	for _, li := range info.Leases {
		if li.Lost {
			lost++
		}
	}
	require.Equal(t, len(leases), lost, "lost leases listed until released")
	for _, l := range leases {
		require.NoError(t, l.Release())
		require.ErrorIs(t, l.Err(), ErrLost, "Release keeps the lost error")
	}
	require.NoError(t, x.Release())
	require.Equal(t, int32(len(leases)), obs.lost.Load())
	eventually(t, "backend idle", b.idle)
	eventually(t, "queue empty", func() bool { return len(q.Snapshot()) == 0 })
}

// Regression: a queue drained by reslicing kept its array, and through it
// every waiter served (with its lease, group and hold) until the entry went
// idle and was removed, which the Queue delays by up to 4,096 idle entries.
// Served and cancelled waiters must not be reachable from the entry.
func TestQueueForgetsServedWaiters(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	first, err := q.Acquire(ctx, "w", Exclusive)
	require.NoError(t, err)
	const n = 8
	chs := make([]<-chan acquired, n)
	for i := range n {
		chs[i] = acquireAsync(ctx, q, "w", Exclusive)
		eventually(t, fmt.Sprintf("waiter %d queued", i), func() bool { return queued(q, "w") == i+1 })
	}
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := acquireAsync(cctx, q, "w", Exclusive)
	eventually(t, "the last waiter queued", func() bool { return queued(q, "w") == n+1 })
	cancel()
	r := <-gaveUp
	require.ErrorIs(t, r.err, context.Canceled)

	// The queue's whole array as it is now: nothing is queued from here
	// on, so it stays the array the entry uses (or dropped), and the
	// slots the queue's start moves past stay in view.
	e := q.entries["w"]
	e.mu.Lock()
	all := e.waiters[:cap(e.waiters)]
	e.mu.Unlock()
	reachable := func() int {
		e.mu.Lock()
		defer e.mu.Unlock()
		k := 0
		for _, w := range all {
			if w != nil {
				k++
			}
		}
		return k
	}
	require.Equal(t, n, reachable(), "only the waiters still queued are reachable")
	require.NoError(t, first.Release())
	for i := range n {
		l := granted(t, chs[i])
		require.Equal(t, n-1-i, reachable(), "after grant %d", i)
		require.NoError(t, l.Release())
	}
	e.mu.Lock()
	drained := e.waiters
	e.mu.Unlock()
	require.Nil(t, drained, "a drained queue keeps no array")
	eventually(t, "backend idle", b.idle)
}

// ForgetIdle drops the entries of names nobody uses and keeps the others:
// a held name stays held, releasable and exclusive, and a forgotten name
// locks again as before.
func TestQueueForgetIdle(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	for i := range 10 {
		l, err := q.Acquire(ctx, fmt.Sprintf("idle%d", i), Exclusive)
		require.NoError(t, err)
		require.NoError(t, l.Release())
	}
	held, err := q.Acquire(ctx, "held", Exclusive)
	require.NoError(t, err)
	entries := func() []string {
		q.mu.Lock()
		defer q.mu.Unlock()
		return slices.Sorted(maps.Keys(q.entries))
	}
	require.Len(t, entries(), 11, "idle entries are kept until forgotten")

	q.ForgetIdle()
	require.Equal(t, []string{"held"}, entries())
	_, err = q.TryAcquire(ctx, "held", Exclusive)
	require.ErrorIs(t, err, ErrWouldBlock, "a held name stays held")
	require.NoError(t, held.Release())
	l, err := q.Acquire(ctx, "idle3", Exclusive)
	require.NoError(t, err, "a forgotten name locks again")
	require.NoError(t, l.Release())

	q.ForgetIdle()
	require.Empty(t, entries())
	eventually(t, "backend idle", b.idle)
	require.NoError(t, q.Close())
	q.ForgetIdle() // safe after Close
}
