package enginetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// Slot cases: the rules of lock calls (flock(2), fcntl record locks) that
// lockengine.Slot implements on top of an engine. They run against every
// backend like the rest of the suite.
func init() {
	Cases["SlotSameModeIsNoop"] = testSlotSameMode
	Cases["SlotUpgradeQueues"] = testSlotUpgrade
	Cases["SlotTryUpgradeFails"] = testSlotTryUpgrade
	Cases["SlotTryLockKeepRestores"] = testSlotTryLockKeep
	Cases["SlotDowngradeInPlace"] = testSlotDowngrade
	Cases["SlotNeverWaitsForItself"] = testSlotSelf
	Cases["SlotOwnersExclude"] = testSlotOwners
	Cases["SlotCancelLeavesNothing"] = testSlotCancel
	Cases["SlotCloseEndsWait"] = testSlotClose
	Cases["SlotRetakesAfterBreak"] = testSlotBreak
}

// slotLock runs s.Lock in a goroutine.
func slotLock(ctx context.Context, s *lockengine.Slot, m lockengine.Mode) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Lock(ctx, m, true) }()
	return ch
}

// slotNotYet asserts that Lock does not return for a short while; like
// notYet it is paired with a positive check afterwards.
func slotNotYet(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s: Lock returned %v, want still waiting", what, err)
	case <-time.After(50 * time.Millisecond):
	}
}

func slotDone(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-ctxT(t).Done():
		t.Fatal("timed out waiting for Slot.Lock")
		return nil
	}
}

func testSlotSameMode(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "same", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Exclusive, false))
	l := s.Lease()
	require.NotNil(t, l)
	require.NoError(t, s.Lock(ctx, lockengine.Exclusive, true))
	assert.Same(t, l, s.Lease(), "locking again in the held mode keeps the lease")
	require.NoError(t, s.Unlock(ctx))
	assert.Nil(t, s.Lease())
	require.NoError(t, s.Unlock(ctx), "unlock of an empty slot")
}

// An upgrade gives the shared lock back and queues behind the holders:
// it is granted when the other shared holder (in the other engine) leaves,
// with a token above the shared one.
func testSlotUpgrade(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "up", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Shared, true))
	shTok := s.Lease().Token()
	other, err := b.Acquire(ctx, "up", lockengine.Shared)
	require.NoError(t, err)
	ch := slotLock(ctx, s, lockengine.Exclusive)
	waitFor(t, "the upgrade to give the shared lease back", func() bool { return s.Lease() == nil })
	slotNotYet(t, ch, "upgrade while another shared holder holds")
	require.NoError(t, other.Release())
	require.NoError(t, slotDone(t, ch))
	l := s.Lease()
	require.NotNil(t, l)
	assert.Equal(t, lockengine.Exclusive, l.Mode())
	assert.Greater(t, l.Token(), shTok)
}

// A non-blocking upgrade that cannot be granted at once fails with
// ErrWouldBlock and leaves the slot empty, as flock(2) documents.
func testSlotTryUpgrade(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "tryup", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Shared, true))
	other, err := b.Acquire(ctx, "tryup", lockengine.Shared)
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Release() })
	err = s.Lock(ctx, lockengine.Exclusive, false)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	assert.Nil(t, s.Lease())
}

// A record-lock upgrade that cannot be granted at once leaves the slot in
// its former mode when nobody took the name in between (a failed F_SETLK
// leaves the process's locks unchanged).
func testSlotTryLockKeep(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "keep", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Shared, true))
	other, err := b.Acquire(ctx, "keep", lockengine.Shared)
	require.NoError(t, err)
	err = s.TryLockKeep(ctx, lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	l := s.Lease()
	require.NotNil(t, l, "the shared lock is taken back")
	assert.Equal(t, lockengine.Shared, l.Mode())
	assert.NoError(t, l.Err())
	require.NoError(t, other.Release())
	require.NoError(t, s.TryLockKeep(ctx, lockengine.Exclusive), "the upgrade once the other holder left")
	assert.Equal(t, lockengine.Exclusive, s.Lease().Mode())
}

// A downgrade never gives the name up: the slot's lease turns shared with
// the same token, and a shared request queued behind it is granted at once.
func testSlotDowngrade(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "down", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Exclusive, true))
	tok := s.Lease().Token()
	reader := acquireAsync(ctx, a, "down", lockengine.Shared)
	waitFor(t, "the reader to queue", func() bool { return waiters(a, "down") == 1 })
	require.NoError(t, s.Lock(ctx, lockengine.Shared, false), "a downgrade needs no wait")
	l := s.Lease()
	require.NotNil(t, l)
	assert.Equal(t, lockengine.Shared, l.Mode())
	assert.Equal(t, tok, l.Token())
	r := get(t, reader)
	t.Cleanup(func() { _ = r.Release() })
	assert.NoError(t, l.Err(), "the downgraded lease is still held")
	writer := acquireAsync(ctx, a, "down", lockengine.Exclusive)
	notYet(t, writer, "a writer while the downgraded holder and the reader hold")
	require.NoError(t, s.Unlock(ctx))
	require.NoError(t, r.Release())
	w := get(t, writer)
	assert.Greater(t, w.Token(), tok)
	require.NoError(t, w.Release())
}

// A slot that took over a lease (the lock a descriptor's open took) never
// waits for it: the same or a weaker mode succeeds at once, Unlock
// releases it, and a later Lock takes the name again.
func testSlotSelf(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	open, err := a.Acquire(ctx, "self", lockengine.Exclusive)
	require.NoError(t, err)
	s := lockengine.NewSlot(a, "self", open)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(ctx, lockengine.Exclusive, false))
	assert.Same(t, open, s.Lease())
	require.NoError(t, s.Lock(ctx, lockengine.Shared, false))
	require.NoError(t, s.Lock(ctx, lockengine.Shared, true))
	require.NoError(t, s.Unlock(ctx))
	assert.ErrorIs(t, open.Err(), lockengine.ErrReleased)
	other, err := b.TryAcquire(ctx, "self", lockengine.Exclusive)
	require.NoError(t, err, "the name is free after Unlock")
	ch := slotLock(ctx, s, lockengine.Exclusive)
	slotNotYet(t, ch, "Lock while another engine holds")
	require.NoError(t, other.Release())
	require.NoError(t, slotDone(t, ch))
	assert.Equal(t, lockengine.Exclusive, s.Lease().Mode())
}

// Two slots are two owners: they exclude each other in FIFO order.
func testSlotOwners(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	s1 := lockengine.NewSlot(a, "own2", nil)
	s2 := lockengine.NewSlot(a, "own2", nil)
	s3 := lockengine.NewSlot(b, "own2", nil)
	for _, s := range []*lockengine.Slot{s1, s2, s3} {
		t.Cleanup(func() { _ = s.Close() })
	}
	require.NoError(t, s1.Lock(ctx, lockengine.Exclusive, true))
	require.ErrorIs(t, s2.Lock(ctx, lockengine.Exclusive, false), lockengine.ErrWouldBlock)
	require.ErrorIs(t, s3.Lock(ctx, lockengine.Shared, false), lockengine.ErrWouldBlock)
	ch2 := slotLock(ctx, s2, lockengine.Exclusive)
	waitFor(t, "s2 to queue", func() bool { return waiters(a, "own2") == 1 })
	slotNotYet(t, ch2, "second owner")
	require.NoError(t, s1.Unlock(ctx))
	require.NoError(t, slotDone(t, ch2))
	require.ErrorIs(t, s3.Lock(ctx, lockengine.Exclusive, false), lockengine.ErrWouldBlock)
	require.NoError(t, s2.Unlock(ctx))
	require.NoError(t, s3.Lock(ctx, lockengine.Exclusive, true))
}

// A waiting Lock ends with its context (a signal to a blocked flock) and
// leaves nothing queued or held.
func testSlotCancel(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	holder, err := a.Acquire(ctx, "scancel", lockengine.Exclusive)
	require.NoError(t, err)
	s := lockengine.NewSlot(a, "scancel", nil)
	t.Cleanup(func() { _ = s.Close() })
	cctx, cancel := context.WithCancel(ctx)
	ch := slotLock(cctx, s, lockengine.Exclusive)
	waitFor(t, "the slot to queue", func() bool { return waiters(a, "scancel") == 1 })
	cancel()
	err = slotDone(t, ch)
	require.ErrorIs(t, err, context.Canceled)
	assert.Nil(t, s.Lease())
	waitFor(t, "the queue to empty", func() bool { return waiters(a, "scancel") == 0 })
	require.NoError(t, holder.Release())
	l, err := a.TryAcquire(ctx, "scancel", lockengine.Exclusive)
	require.NoError(t, err, "nothing left behind by the cancelled slot")
	require.NoError(t, l.Release())
}

// Close ends a waiting Lock with ErrClosed, fails later ones, and releases
// what the slot held.
func testSlotClose(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	holder := lockengine.NewSlot(a, "sclose", nil)
	require.NoError(t, holder.Lock(ctx, lockengine.Exclusive, true))
	s := lockengine.NewSlot(a, "sclose", nil)
	ch := slotLock(ctx, s, lockengine.Exclusive)
	waitFor(t, "the slot to queue", func() bool { return waiters(a, "sclose") == 1 })
	require.NoError(t, s.Close())
	require.ErrorIs(t, slotDone(t, ch), lockengine.ErrClosed)
	require.ErrorIs(t, s.Lock(ctx, lockengine.Shared, false), lockengine.ErrClosed)
	l := holder.Lease()
	require.NoError(t, holder.Close())
	assert.ErrorIs(t, l.Err(), lockengine.ErrReleased)
	require.NoError(t, holder.Close(), "Close is idempotent")
	waitFor(t, "the name to be free", func() bool {
		l, err := a.TryAcquire(ctx, "sclose", lockengine.Exclusive)
		if err == nil {
			_ = l.Release()
		}
		return err == nil
	})
}

// A slot whose lease was broken gives it back on the next Lock and takes
// the name again, with a higher token.
func testSlotBreak(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	s := lockengine.NewSlot(a, "sbreak", nil)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Lock(lockengine.WithOwner(ctx, lockengine.Owner{UID: 1000}), lockengine.Exclusive, true))
	old := s.Lease()
	require.NoError(t, a.Break(ctx, "sbreak", lockengine.Owner{UID: 0}))
	waitFor(t, "the lease to be lost", func() bool { return old.Err() != nil })
	require.True(t, errors.Is(old.Err(), lockengine.ErrBroken), "err %v", old.Err())
	require.NoError(t, s.Lock(ctx, lockengine.Exclusive, true))
	l := s.Lease()
	require.NotNil(t, l)
	assert.NoError(t, l.Err())
	assert.Greater(t, l.Token(), old.Token())
}
