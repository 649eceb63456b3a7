package lockengine

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A Bump that blocks (an etcd transaction waiting for its timeout) must not
// block inspection: Inspect and Snapshot take the per-name lock, which the
// Queue never holds across a backend call. Release, Break and a loss of
// the name wait for the Bump instead of overlapping it.
func TestQueueBlockingBumpDoesNotBlockInspect(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{LockDelay: 50 * time.Millisecond})
	gate := make(chan struct{})
	b.bumpGate = gate
	ctx := testCtx(t)
	require.NoError(t, q.SetLimit("sem", 3))
	l1, err := q.Acquire(ctx, "sem", Exclusive)
	require.NoError(t, err)

	second := acquireAsync(ctx, q, "sem", Exclusive) // bumps inline
	eventually(t, "the second holder's Bump to start", func() bool { return b.bumping.Load() == 1 })
	third := acquireAsync(ctx, q, "sem", Exclusive) // queues behind the Bump
	eventually(t, "the third request to queue", func() bool { return queued(q, "sem") == 1 })

	inspected := make(chan LockInfo, 1)
	go func() {
		info, _ := q.Inspect("sem")
		_ = q.Snapshot()
		inspected <- info
	}()
	select {
	case info := <-inspected:
		require.Equal(t, StateHeld, info.State)
		require.Equal(t, 1, info.Holders)
	case <-time.After(timeout):
		t.Fatal("Inspect blocked on a Bump in progress")
	}

	// A release during the Bump waits for it, and no second backend call
	// for the name starts meanwhile (the fake records violations).
	released := make(chan error, 1)
	go func() { released <- l1.Release() }()
	stillWaitingErr(t, released, "release during a Bump")

	close(gate)
	require.NoError(t, <-released)
	l2 := granted(t, second)
	l3 := granted(t, third)
	require.Greater(t, l2.Token(), l1.Token())
	require.Greater(t, l3.Token(), l2.Token(), "tokens strictly increase")
	require.NoError(t, l2.Release())
	require.NoError(t, l3.Release())
	eventually(t, "the backend idle", b.idle)
}

// stillWaitingErr asserts that nothing arrives on ch for a short while.
func stillWaitingErr(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s: returned %v, want still waiting", what, err)
	case <-time.After(30 * time.Millisecond):
	}
}

// Break's own Bump is made without the per-name lock too.
func TestQueueBreakBumpDoesNotBlockInspect(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{LockDelay: 50 * time.Millisecond})
	gate := make(chan struct{})
	b.bumpGate = gate
	ctx := testCtx(t)
	l, err := q.Acquire(ctx, "x", Exclusive)
	require.NoError(t, err)
	broke := make(chan error, 1)
	go func() { broke <- q.Break(ctx, "x", Owner{UID: 0}) }()
	eventually(t, "Break's Bump to start", func() bool { return b.bumping.Load() == 1 })
	<-l.Done() // the holder learns of the break before the Bump ends
	done := make(chan struct{})
	go func() {
		q.Inspect("x")
		q.Snapshot()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatal("Inspect blocked on Break's Bump")
	}
	w := acquireAsync(ctx, q, "x", Exclusive)
	eventually(t, "a waiter queued", func() bool { return queued(q, "x") == 1 })
	close(gate)
	require.NoError(t, <-broke)
	next := granted(t, w)
	require.Greater(t, next.Token(), l.Token())
	require.NoError(t, next.Release())
	require.NoError(t, l.Release())
	eventually(t, "the backend idle", b.idle)
}

// Inspection lists the current leases in grant order, so the first one
// (the owner stat shows) stays the same while later holders come and go.
func TestQueueInspectGrantOrder(t *testing.T) {
	q, _ := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	var ls []*Lease
	for uid := range uint32(3) {
		l, err := q.Acquire(WithOwner(ctx, Owner{UID: 1000 + uid}), "s", Shared)
		require.NoError(t, err)
		ls = append(ls, l)
	}
	info, ok := q.Inspect("s")
	require.True(t, ok)
	require.Len(t, info.Leases, 3)
	for i, li := range info.Leases {
		require.Equal(t, uint32(1000+i), li.Owner.UID)
	}
	require.NoError(t, ls[2].Release())
	require.NoError(t, ls[1].Release())
	l, err := q.Acquire(WithOwner(ctx, Owner{UID: 2000}), "s", Shared)
	require.NoError(t, err)
	info, _ = q.Inspect("s")
	require.Equal(t, uint32(1000), info.Leases[0].Owner.UID)
	require.Equal(t, uint32(2000), info.Leases[1].Owner.UID)
	require.NoError(t, ls[0].Release())
	info, _ = q.Inspect("s")
	require.Equal(t, uint32(2000), info.Leases[0].Owner.UID)
	require.NoError(t, l.Release())
}

// A request whose Bump finds the hold gone gives the hold back without the
// per-name lock before it queues for a new grant. If Close runs during that
// Unlock, the request must fail with ErrClosed, not queue on the closed
// name (where nothing would ever grant it, and a worker would start after
// Close had waited for the last one).
func TestQueueCloseDuringUnlockAfterFailedBump(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	require.NoError(t, q.SetLimit("sem", 2))
	l1, err := q.Acquire(ctx, "sem", Exclusive)
	require.NoError(t, err)
	// The backend can no longer prove the hold, and has not said so yet.
	b.hold("sem").valid.Store(false)
	gate := make(chan struct{})
	b.unlockGate = gate

	second := acquireAsync(ctx, q, "sem", Exclusive) // bumps, fails, gives the hold back
	eventually(t, "the failed Bump's Unlock to start", func() bool { return b.unlocking.Load() == 1 })
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	eventually(t, "Close to mark the name closed", func() bool {
		q.mu.Lock()
		e := q.entries["sem"]
		q.mu.Unlock()
		if e == nil || !e.mu.TryLock() {
			return false
		}
		defer e.mu.Unlock()
		return e.closed
	})
	close(gate)
	select {
	case r := <-second:
		require.ErrorIs(t, r.err, ErrClosed)
		require.Nil(t, r.l)
	case <-time.After(timeout):
		t.Fatal("the request queued on a closed name")
	}
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(timeout):
		t.Fatal("Close did not return")
	}
	require.ErrorIs(t, l1.Err(), ErrLost)
}
