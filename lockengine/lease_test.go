package lockengine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Regression: Lease.end set ended before it took doneMu, so a Done call in
// between installed the shared closed channel and end then closed it again
// ("close of closed channel" from the heartbeat goroutine). Many goroutines
// call Done and Err while leases are lost and released at the same time.
func TestLeaseDoneRacesWithEnd(t *testing.T) {
	b := newFakeBackend()
	q := NewQueue(b, QueueOptions{})
	t.Cleanup(func() { _ = q.Close() })
	ctx := context.Background()

	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline) || i < 200; i++ {
		name := fmt.Sprintf("n%d", i%4)
		l, err := q.Acquire(ctx, name, Exclusive)
		if err != nil {
			t.Fatalf("acquire %s: %v", name, err)
		}
		h := b.hold(name)
		var start, wg sync.WaitGroup
		start.Add(1)
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				for {
					select {
					case <-l.Done():
						if err := l.Err(); err == nil {
							t.Errorf("lease %s: Done closed with nil Err", name)
						}
						return
					default:
						_ = l.Err()
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			if i%2 == 0 {
				h.lose()
			}
			_ = l.Release()
		}()
		start.Done()
		wg.Wait()
		err = l.Err()
		if !errors.Is(err, ErrLost) && !errors.Is(err, ErrReleased) {
			t.Fatalf("lease %s ended with %v, want ErrLost or ErrReleased", name, err)
		}
	}
}

// Downgrade racing the holder's own Release: the lease's reference to its
// entry is dropped exactly once, whichever wins, and the name ends free.
func TestDowngradeRacesWithRelease(t *testing.T) {
	b := newFakeBackend()
	q := NewQueue(b, QueueOptions{})
	t.Cleanup(func() { _ = q.Close() })
	ctx := context.Background()
	for i := range 5000 {
		l, err := q.Acquire(ctx, "d", Exclusive)
		if err != nil {
			t.Fatalf("round %d: acquire: %v", i, err)
		}
		done := make(chan *Lease, 1)
		go func() {
			nl, err := l.Downgrade()
			if err != nil {
				nl = nil
			}
			done <- nl
		}()
		_ = l.Release()
		if nl := <-done; nl != nil {
			if err := nl.Release(); err != nil {
				t.Fatalf("round %d: release downgraded: %v", i, err)
			}
		}
		q.mu.Lock()
		e := q.entries["d"]
		q.mu.Unlock()
		if e != nil {
			if refs := e.refs.Load(); refs != 0 {
				t.Fatalf("round %d: entry refs %d after every lease ended, want 0", i, refs)
			}
		}
	}
	l, err := q.TryAcquire(ctx, "d", Exclusive)
	if err != nil {
		t.Fatalf("name not free at the end: %v", err)
	}
	_ = l.Release()
}

// A downgrade that finds the lease lost (the loss shows only when the
// backend's Bump in progress fails, after Slot.Lock looked at the lease) is
// a lost lease like one seen before the call: the slot gives it back and
// asks for the new mode anew, rather than failing the lock call with the
// loss of a lock it no longer claims. Found by the model test on etcd,
// where a deleted key shows in a Bump. Depending on the interleaving the
// conversion sees the loss before or inside Downgrade, or downgrades
// before the Bump's failure is handled; no order may fail the call.
func TestSlotDowngradeFindsLeaseLost(t *testing.T) {
	for i := range 50 {
		q, b := newTestQueue(t, QueueOptions{})
		ctx := testCtx(t)
		require.NoError(t, q.SetLimit("sem", 2))
		s := NewSlot(q, "sem", nil)
		require.NoError(t, s.Lock(ctx, Exclusive, true))
		// The hold is gone and nothing shows it yet: the next grant's
		// Bump will find out, and waits at the gate meanwhile.
		b.bumpLoses.Store(true)
		gate := make(chan struct{})
		b.bumpGate = gate
		second := acquireAsync(ctx, q, "sem", Exclusive)
		eventually(t, "the second grant's Bump to start", func() bool { return b.bumping.Load() == 1 })
		converted := make(chan error, 1)
		go func() { converted <- s.Lock(ctx, Shared, true) }()
		q.mu.Lock()
		e := q.entries["sem"]
		q.mu.Unlock()
		eventually(t, "the conversion to wait for the Bump", func() bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.bumped != nil
		})
		close(gate)

		// Whichever is granted first is let go, then the other must
		// be granted too.
		var convErr error
		var secondLease *Lease
		for got := 0; got < 2; got++ {
			select {
			case convErr = <-converted:
				require.NoError(t, convErr, "round %d: the conversion failed", i)
				if secondLease == nil {
					require.NoError(t, s.Unlock(ctx))
				}
			case r := <-second:
				require.NoError(t, r.err, "round %d: the second request", i)
				secondLease = r.l
				require.NoError(t, r.l.Release())
			case <-time.After(timeout):
				t.Fatalf("round %d: the conversion or the second request was never granted", i)
			}
		}
		require.NoError(t, s.Close())
		require.NoError(t, q.Close())
	}
}
