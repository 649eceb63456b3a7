package enginetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// BackendFactory returns two Backends that share one store, as two daemons
// sharing a state directory or an etcd cluster would, and lose, which makes
// the store take away the grant of name from whichever backend holds it
// (remove the lock file, delete the etcd key) so that the holder's lost
// callback runs within Timeout. lose must do nothing harmful when nobody
// holds name. The factory registers the backends' Close with t.Cleanup
// (Close is idempotent, so cases may close them earlier).
//
// The cases call a backend the way a Queue does: at most one call in
// progress and one Hold outstanding per name and backend.
type BackendFactory func(t *testing.T) (a, b lockengine.Backend, lose func(name string))

// BackendCases is the Backend-level suite, by name: what a Backend must do
// for the Queue, checked without one. RunBackend runs all of them.
var BackendCases = map[string]func(t *testing.T, f BackendFactory){
	"ExclusiveExcludes":          testBackendExclusiveExcludes,
	"TryLockLeavesNothing":       testBackendTryLockLeavesNothing,
	"CancelledLockLeavesNothing": testBackendCancelledLock,
	"UnlockIdempotent":           testBackendUnlockIdempotent,
	"LostOnce":                   testBackendLostOnce,
	"NotLostAfterUnlock":         testBackendNotLostAfterUnlock,
	"LostRacingUnlock":           testBackendLostRacingUnlock,
	"BumpIncreases":              testBackendBump,
	"TokensStrictlyIncrease":     testBackendTokens,
	"CloseReleases":              testBackendClose,
	"InvalidName":                testBackendInvalidName,
}

// RunBackend runs every Backend case as a subtest.
func RunBackend(t *testing.T, f BackendFactory) {
	for name, c := range BackendCases {
		t.Run(name, func(t *testing.T) { c(t, f) })
	}
}

// lostRec records the calls of a lost callback.
type lostRec struct {
	calls atomic.Int32
	mu    sync.Mutex
	err   error         // guarded by mu; the first call's argument
	first chan struct{} // closed by the first call
}

func newLostRec() *lostRec { return &lostRec{first: make(chan struct{})} }

func (r *lostRec) fn(err error) {
	if r.calls.Add(1) == 1 {
		r.mu.Lock()
		r.err = err
		r.mu.Unlock()
		close(r.first)
	}
}

// wait waits for the first call and returns its argument.
func (r *lostRec) wait(t *testing.T, what string) error {
	t.Helper()
	select {
	case <-r.first:
	case <-time.After(Timeout):
		t.Fatalf("%s: lost callback not called within %v", what, Timeout)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

type holdResult struct {
	h   lockengine.Hold
	err error
}

// lockAsync starts Lock in a goroutine and returns its result channel.
func lockAsync(ctx context.Context, b lockengine.Backend, name string, m lockengine.Mode, lost func(error)) <-chan holdResult {
	ch := make(chan holdResult, 1)
	go func() {
		h, err := b.Lock(ctx, name, m, lost)
		ch <- holdResult{h, err}
	}()
	return ch
}

func holdPending(t *testing.T, ch <-chan holdResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: got hold=%v err=%v, want still waiting", what, r.h != nil, r.err)
	case <-time.After(50 * time.Millisecond):
	}
}

func gotHold(t *testing.T, ch <-chan holdResult) lockengine.Hold {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.h
	case <-time.After(Timeout):
		t.Fatal("timed out waiting for a grant")
		return nil
	}
}

// nopLost is the lost callback of holds whose loss the case does not
// provoke; a call fails the test.
func nopLost(t *testing.T) func(error) {
	return func(err error) { t.Errorf("unexpected lost callback: %v", err) }
}

func mustLock(t *testing.T, b lockengine.Backend, name string, m lockengine.Mode, lost func(error)) lockengine.Hold {
	t.Helper()
	h, err := b.Lock(ctxT(t), name, m, lost)
	require.NoError(t, err)
	require.NotNil(t, h)
	return h
}

// tryFree requires that b can take name exclusively at once, and gives it
// back.
func tryFree(t *testing.T, b lockengine.Backend, name, what string) {
	t.Helper()
	h, err := b.TryLock(ctxT(t), name, lockengine.Exclusive, nopLost(t))
	require.NoError(t, err, "%s: %q is not free", what, name)
	require.NoError(t, h.Unlock())
}

func testBackendExclusiveExcludes(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	ctx := ctxT(t)
	h, err := a.TryLock(ctx, "x", lockengine.Exclusive, nopLost(t))
	require.NoError(t, err)
	require.True(t, h.Valid())
	for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		_, err := b.TryLock(ctx, "x", m, nopLost(t))
		require.ErrorIs(t, err, lockengine.ErrWouldBlock, "%v", m)
	}
	ch := lockAsync(ctx, b, "x", lockengine.Exclusive, nopLost(t))
	holdPending(t, ch, "exclusive Lock on the other backend")
	require.NoError(t, h.Unlock())
	h2 := gotHold(t, ch)
	require.Greater(t, h2.Token(), h.Token())
	require.NoError(t, h2.Unlock())

	// Shared holders of both backends together; exclusive waits for both.
	s1 := mustLock(t, a, "s", lockengine.Shared, nopLost(t))
	s2, err := b.TryLock(ctx, "s", lockengine.Shared, nopLost(t))
	require.NoError(t, err, "shared holders of two backends share the name")
	require.NoError(t, s2.Unlock())
	_, err = b.TryLock(ctx, "s", lockengine.Exclusive, nopLost(t))
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	ch = lockAsync(ctx, b, "s", lockengine.Exclusive, nopLost(t))
	holdPending(t, ch, "exclusive while the other backend holds shared")
	require.NoError(t, s1.Unlock())
	require.NoError(t, gotHold(t, ch).Unlock())
}

// A TryLock that would block returns promptly, wrapping ErrWouldBlock, and
// leaves nothing behind: no hold, nothing that keeps anyone from the name
// once its holder gives it back.
func testBackendTryLockLeavesNothing(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	ctx := ctxT(t)
	for _, held := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		h := mustLock(t, a, "t", held, nopLost(t))
		for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
			if held == lockengine.Shared && m == lockengine.Shared {
				continue
			}
			for range 3 {
				start := time.Now()
				got, err := b.TryLock(ctx, "t", m, nopLost(t))
				require.ErrorIs(t, err, lockengine.ErrWouldBlock, "held %v, try %v", held, m)
				require.Nil(t, got, "a failed TryLock returns no hold")
				require.Contains(t, err.Error(), "t", "the error names the lock")
				require.Less(t, time.Since(start), Timeout/2, "TryLock waited for the holder")
			}
		}
		require.NoError(t, h.Unlock())
		// Nothing left of the failed attempts: the holder's backend can
		// take the name again at once, then the other one.
		tryFree(t, a, "t", "after b's failed TryLocks")
		tryFree(t, b, "t", "after b's failed TryLocks")
	}
}

// A Lock whose context ends while it waits returns the context's error and
// leaves nothing behind.
func testBackendCancelledLock(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	h := mustLock(t, a, "c", lockengine.Exclusive, nopLost(t))
	for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		wctx, cancel := context.WithCancel(ctxT(t))
		ch := lockAsync(wctx, b, "c", m, nopLost(t))
		holdPending(t, ch, "Lock while the other backend holds")
		cancel()
		select {
		case r := <-ch:
			require.ErrorIs(t, r.err, context.Canceled)
			require.Nil(t, r.h)
		case <-time.After(Timeout):
			t.Fatal("cancelled Lock did not return")
		}
	}
	require.NoError(t, h.Unlock())
	tryFree(t, a, "c", "after b's cancelled Locks")
	tryFree(t, b, "c", "after b's cancelled Locks")
}

func testBackendUnlockIdempotent(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	rec := newLostRec()
	h := mustLock(t, a, "u", lockengine.Exclusive, rec.fn)
	require.True(t, h.Valid())
	require.NoError(t, h.Unlock())
	require.NoError(t, h.Unlock())
	h2 := mustLock(t, b, "u", lockengine.Exclusive, nopLost(t))
	// A late Unlock of the old hold does not release the new grant.
	require.NoError(t, h.Unlock())
	_, err := a.TryLock(ctxT(t), "u", lockengine.Exclusive, nopLost(t))
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "an Unlock of an old hold released a later grant")
	require.NoError(t, h2.Unlock())
	require.NoError(t, h2.Unlock())
	tryFree(t, a, "u", "after Unlock")
	require.Zero(t, rec.calls.Load(), "an unlocked hold was reported lost")
}

// A hold the store took away is reported lost once, with an error wrapping
// ErrLost; it is no longer Valid nor bumpable, and Unlock of it is a
// harmless no-op that leaves the name free.
func testBackendLostOnce(t *testing.T, f BackendFactory) {
	a, b, lose := f(t)
	for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		name := "lost-" + m.String()
		rec := newLostRec()
		other := newLostRec()
		h := mustLock(t, a, name, m, rec.fn)
		keep := mustLock(t, a, name+"-other", lockengine.Exclusive, other.fn)
		lose(name)
		err := rec.wait(t, "hold taken away")
		require.ErrorIs(t, err, lockengine.ErrLost)
		require.Contains(t, err.Error(), name, "the error names the lock")
		require.False(t, h.Valid(), "a lost hold is not Valid")
		_, err = h.Bump()
		require.ErrorIs(t, err, lockengine.ErrNotHeld, "Bump of a lost hold")
		require.NoError(t, h.Unlock())
		require.NoError(t, h.Unlock())
		// Taken by the other backend, then lost again by it: the old
		// hold's callback is not called a second time.
		h2 := mustLock(t, b, name, lockengine.Exclusive, nopLost(t))
		require.NoError(t, h2.Unlock())
		require.Equal(t, int32(1), rec.calls.Load(), "lost callback calls")
		require.True(t, keep.Valid(), "another name's hold was lost too")
		require.NoError(t, keep.Unlock())
		require.Zero(t, other.calls.Load())
	}
}

// Once Unlock has returned, the hold's lost callback is never called, even
// when the store then takes the name away (here: after another hold's
// loss has been reported, so the backend's loss detection ran since).
func testBackendNotLostAfterUnlock(t *testing.T, f BackendFactory) {
	a, _, lose := f(t)
	rec := newLostRec()
	h := mustLock(t, a, "n", lockengine.Exclusive, rec.fn)
	require.NoError(t, h.Unlock())
	lose("n")
	probe := newLostRec()
	p := mustLock(t, a, "probe", lockengine.Exclusive, probe.fn)
	lose("probe")
	require.ErrorIs(t, probe.wait(t, "probe hold taken away"), lockengine.ErrLost)
	require.NoError(t, p.Unlock())
	require.Zero(t, rec.calls.Load(), "lost callback called after Unlock returned")
}

// Loss and Unlock racing: the callback is still called at most once, and
// the name is free afterwards. (The callback may run concurrently with or
// shortly after an Unlock that raced with the loss: see Backend.)
func testBackendLostRacingUnlock(t *testing.T, f BackendFactory) {
	a, b, lose := f(t)
	recs := make([]*lostRec, 0, 10)
	for i := range 10 {
		name := fmt.Sprintf("race%d", i)
		rec := newLostRec()
		recs = append(recs, rec)
		h := mustLock(t, a, name, lockengine.Exclusive, rec.fn)
		done := make(chan struct{})
		go func() {
			defer close(done)
			lose(name)
		}()
		require.NoError(t, h.Unlock())
		<-done
		require.NoError(t, h.Unlock())
		var h2 lockengine.Hold
		waitFor(t, "name free after loss and Unlock", func() bool {
			ctx, cancel := opCtx()
			defer cancel()
			var err error
			h2, err = b.TryLock(ctx, name, lockengine.Exclusive, nopLost(t))
			return err == nil
		})
		require.NoError(t, h2.Unlock())
	}
	// Let any loss in flight be reported before counting.
	probe := newLostRec()
	p := mustLock(t, a, "probe", lockengine.Exclusive, probe.fn)
	lose("probe")
	probe.wait(t, "probe hold taken away")
	require.NoError(t, p.Unlock())
	for i, rec := range recs {
		require.LessOrEqual(t, rec.calls.Load(), int32(1), "hold %d: lost callback calls", i)
	}
}

// Bump raises an exclusive hold's token above every earlier token of the
// name; the next grant, on either backend, is above that. Shared and
// released holds refuse with ErrNotHeld.
func testBackendBump(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	h := mustLock(t, a, "b", lockengine.Exclusive, nopLost(t))
	last := h.Token()
	for range 3 {
		tok, err := h.Bump()
		require.NoError(t, err)
		require.Greater(t, tok, last, "Bump returns a larger token")
		require.Equal(t, tok, h.Token(), "Token reports the bumped token")
		last = tok
	}
	require.NoError(t, h.Unlock())
	_, err := h.Bump()
	require.ErrorIs(t, err, lockengine.ErrNotHeld, "Bump of an unlocked hold")
	h2 := mustLock(t, b, "b", lockengine.Exclusive, nopLost(t))
	require.Greater(t, h2.Token(), last, "the next grant is above the bumped token")
	require.NoError(t, h2.Unlock())
	s := mustLock(t, a, "b", lockengine.Shared, nopLost(t))
	_, err = s.Bump()
	require.ErrorIs(t, err, lockengine.ErrNotHeld, "Bump of a shared hold")
	require.NoError(t, s.Unlock())
}

// Every exclusive grant's token is above every earlier grant's of the name,
// across both backends, through TryLock and Lock; a shared grant carries
// at least the last exclusive token.
func testBackendTokens(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	bs := []lockengine.Backend{a, b}
	var lastEx, last uint64
	for i := range 20 {
		var (
			h   lockengine.Hold
			err error
		)
		if i%3 == 0 {
			h, err = bs[i%2].TryLock(ctxT(t), "tok", lockengine.Exclusive, nopLost(t))
		} else {
			h, err = bs[i%2].Lock(ctxT(t), "tok", lockengine.Exclusive, nopLost(t))
		}
		require.NoError(t, err)
		require.Greater(t, h.Token(), last, "exclusive grant %d", i)
		lastEx, last = h.Token(), h.Token()
		require.NoError(t, h.Unlock())
		if i%4 == 3 {
			s := mustLock(t, bs[(i+1)%2], "tok", lockengine.Shared, nopLost(t))
			require.GreaterOrEqual(t, s.Token(), lastEx, "shared grant %d carries the current generation", i)
			last = max(last, s.Token())
			require.NoError(t, s.Unlock())
		}
	}
}

// Close gives back the holds still outstanding, without reporting them
// lost: the other backend can take the names at once. The closed backend
// refuses new requests with ErrClosed, and Close is idempotent.
func testBackendClose(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	ctx := ctxT(t)
	rec := newLostRec()
	mustLock(t, a, "x", lockengine.Exclusive, rec.fn)
	mustLock(t, a, "s", lockengine.Shared, rec.fn)
	require.NoError(t, a.Close())
	for _, name := range []string{"x", "s"} {
		tryFree(t, b, name, "after the holder's backend closed")
	}
	_, err := a.Lock(ctx, "z", lockengine.Exclusive, nopLost(t))
	require.ErrorIs(t, err, lockengine.ErrClosed)
	_, err = a.TryLock(ctx, "z", lockengine.Exclusive, nopLost(t))
	require.ErrorIs(t, err, lockengine.ErrClosed)
	require.NoError(t, a.Close(), "Close is idempotent")
	require.Zero(t, rec.calls.Load(), "Close reported its holds lost")
}

func testBackendInvalidName(t *testing.T, f BackendFactory) {
	a, _, _ := f(t)
	ctx := ctxT(t)
	for _, name := range []string{"", ".", "..", "/", "a/", "/a", "a//b", "a/./b", "a/../b", "a\x00b"} {
		_, err := a.TryLock(ctx, name, lockengine.Exclusive, nopLost(t))
		require.ErrorIs(t, err, lockengine.ErrInvalidName, "%q", name)
		_, err = a.Lock(ctx, name, lockengine.Shared, nopLost(t))
		require.ErrorIs(t, err, lockengine.ErrInvalidName, "%q", name)
	}
	_, err := a.TryLock(ctx, strings.Repeat("n", lockengine.MaxNameLen+1), lockengine.Exclusive, nopLost(t))
	require.ErrorIs(t, err, lockengine.ErrNameTooLong)
}
