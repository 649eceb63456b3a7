package lockengine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrCannotDowngrade is returned by Lease.Downgrade when the lease shares
// its group with other exclusive holders (a counting semaphore), so the
// group cannot turn shared without taking the lock from them.
var ErrCannotDowngrade = errors.New("lockengine: lease cannot be downgraded in place")

// Downgrade converts l, an exclusive lease, into a shared lease of the same
// grant without ever giving the name up: it returns a new shared lease with
// l's token and owner, and l ends as released. Shared requests queued in
// this engine are admitted at once; the backend keeps holding the name
// exclusively until the last lease of the grant is released, so other
// processes (daemons) still wait until then.
//
// A shared lease is returned unchanged. An ended lease returns its Err. A
// lease that shares its grant with other exclusive holders returns an
// error wrapping ErrCannotDowngrade and stays as it was.
func (l *Lease) Downgrade() (*Lease, error) {
	q, e, g := l.q, l.e, l.g
	e.mu.Lock()
	e.waitBump()
	switch {
	case l.ended.Load():
		e.mu.Unlock()
		return nil, l.err
	case l.mode == Shared:
		e.mu.Unlock()
		return l, nil
	case e.group != g || g.leases.n != 1:
		e.mu.Unlock()
		return nil, fmt.Errorf("lock %q: %w: %d exclusive holders", e.name, ErrCannotDowngrade, g.leases.n)
	}
	now := clockNow()
	nl := q.grant(e, g, Shared, l.owner, now)
	g.leases.remove(l)
	g.mode = Shared
	l.end(ErrReleased)
	q.obs.Released(e.name, Exclusive, now.Sub(l.granted))
	q.obs.Granted(e.name, Shared, 0)
	if !e.closed {
		q.dispatch(e)
	}
	e.mu.Unlock()
	// l is no longer listed, so its Release only drops its reference to
	// e (once, even if the holder releases l concurrently).
	_ = l.Release()
	return nl, nil
}

// Slot is where one lock owner keeps its lock on one name: nothing, or one
// lease. The lock calls of a process, flock(2) and fcntl(2) record locks,
// are served by slots: each call converts, releases or takes again the
// slot's lock, as the kernel does for a lock owner on a local filesystem.
//
// Conversions follow flock(2): they are not atomic. An upgrade (shared to
// exclusive) gives the shared lease back and queues the exclusive request
// behind the waiters already queued; a downgrade (exclusive to shared) is
// atomic when the lease is alone in its grant (see Lease.Downgrade).
//
// Calls on one Slot are serialized: a call that finds another in progress
// waits for it, and that wait ends with ctx like the lock wait itself. All
// methods are safe for concurrent use.
type Slot struct {
	eng  Engine
	name string
	// lease is written only by the call in progress (see enter); read
	// anywhere.
	lease atomic.Pointer[Lease]

	mu sync.Mutex
	// busy is set while a call is in progress (enter to leave). A call
	// that finds it set waits, cancellably, for idle to be closed: made
	// by the first call that waits, closed and cleared by leave. A
	// channel made only then keeps a slot that is never contended (the
	// usual case: one per open file description) small.
	busy       bool               // guarded by mu
	idle       chan struct{}      // guarded by mu
	closing    bool               // guarded by mu; set by Close
	cancelWait context.CancelFunc // guarded by mu; ends the Acquire in progress
}

// NewSlot returns a slot for name in eng. held, when not nil, is a lease of
// name that the slot takes over (for example the lock a file's open took);
// the slot then owns it and releases it on Unlock or Close.
func NewSlot(eng Engine, name string, held *Lease) *Slot {
	s := &Slot{eng: eng, name: name}
	s.lease.Store(held)
	return s
}

// Name returns the lock name of the slot.
func (s *Slot) Name() string { return s.name }

// enter waits until no other call is in progress on the slot, or until
// ctx ends, and makes the caller's call the one in progress.
func (s *Slot) enter(ctx context.Context) error {
	s.mu.Lock()
	for s.busy {
		if s.idle == nil {
			s.idle = make(chan struct{})
		}
		idle := s.idle
		s.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return nameErr(s.name, ctx.Err())
		}
		s.mu.Lock()
	}
	s.busy = true
	s.mu.Unlock()
	return nil
}

// closed reports whether Close has begun.
func (s *Slot) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// acquire waits for name in mode until ctx ends or Close begins. Called
// with the call in progress.
func (s *Slot) acquire(ctx context.Context, mode Mode) (*Lease, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, fmt.Errorf("lock %q: %w", s.name, ErrClosed)
	}
	s.cancelWait = cancel
	s.mu.Unlock()
	l, err := s.eng.Acquire(wctx, s.name, mode)
	s.mu.Lock()
	s.cancelWait = nil
	closing := s.closing
	s.mu.Unlock()
	if err != nil && closing && ctx.Err() == nil {
		return nil, fmt.Errorf("lock %q: %w", s.name, ErrClosed)
	}
	return l, err
}

// leave ends the call in progress and wakes the calls waiting in enter.
func (s *Slot) leave() {
	s.mu.Lock()
	s.busy = false
	if s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

// Lock makes the slot hold its name in mode. When it already holds mode it
// returns at once. Otherwise the held lease (if any) is converted: a
// downgrade in place when possible, else the lease is given back and mode
// requested anew. With wait false the request is a TryAcquire (an error
// wrapping ErrWouldBlock when it cannot be granted at once; after an
// upgrade was attempted the slot then holds nothing, as flock(2) says);
// with wait true it is an Acquire, which ends with ctx (wrapped ctx.Err(),
// slot empty). The owner recorded with ctx (WithOwner) owns the new lease.
//
// A lease that was lost or broken is given back before anything else, so
// a later Lock takes the name again; so is one whose loss shows only during
// the conversion (the call then requests mode anew and does not fail with
// the loss). After Close, Lock fails with an error
// wrapping ErrClosed.
func (s *Slot) Lock(ctx context.Context, mode Mode, wait bool) error {
	return s.lock(ctx, mode, wait, false)
}

// TryLockKeep is Lock without waiting, for fcntl(2) record locks: when a
// conversion cannot be granted at once, the slot takes its former mode
// again if that is possible at once, since POSIX leaves a process's locks
// unchanged by a failed F_SETLK. The conversion still gives the former
// lease back first (the engine cannot hold both), so a request queued in
// between can take the name, and the slot then ends empty; the error
// wraps ErrWouldBlock either way.
func (s *Slot) TryLockKeep(ctx context.Context, mode Mode) error {
	return s.lock(ctx, mode, false, true)
}

func (s *Slot) lock(ctx context.Context, mode Mode, wait, keep bool) error {
	if !mode.Valid() {
		return fmt.Errorf("lock %q: %w: %d", s.name, ErrInvalidMode, mode)
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.leave()
	if s.closed() {
		return fmt.Errorf("lock %q: %w", s.name, ErrClosed)
	}
	var former Mode
	if l := s.lease.Load(); l != nil {
		if l.Err() == nil {
			former = l.Mode()
		}
		switch {
		case l.Err() != nil:
			_ = s.releaseLocked()
		case l.Mode() == mode:
			return nil
		case mode == Shared:
			nl, err := l.Downgrade()
			if err == nil {
				s.lease.Store(nl)
				return nil
			}
			_ = s.releaseLocked()
			switch {
			case l.Err() != nil:
				// Lost or broken before the downgrade could happen
				// (a Bump in progress found the hold gone): as if
				// the end had shown before the call, nothing to
				// keep.
				former = 0
			case !errors.Is(err, ErrCannotDowngrade):
				return err
			}
		default:
			_ = s.releaseLocked()
		}
	}
	var (
		l   *Lease
		err error
	)
	if wait {
		l, err = s.acquire(ctx, mode)
	} else {
		l, err = s.eng.TryAcquire(ctx, s.name, mode)
	}
	if err != nil {
		if keep && former != 0 && errors.Is(err, ErrWouldBlock) {
			if back, berr := s.eng.TryAcquire(ctx, s.name, former); berr == nil {
				s.lease.Store(back)
			}
		}
		return err
	}
	s.lease.Store(l)
	return nil
}

// Unlock releases the slot's lease, if any. It waits for a call in
// progress on the slot until ctx ends.
func (s *Slot) Unlock(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.leave()
	return s.releaseLocked()
}

func (s *Slot) releaseLocked() error {
	l := s.lease.Swap(nil)
	if l == nil {
		return nil
	}
	return l.Release()
}

// Close releases the slot's lease for good: use it when the owner is gone
// (the file's last close). A Lock waiting for the name at that moment ends
// with an error wrapping ErrClosed, and every later Lock fails the same
// way. Close is idempotent.
func (s *Slot) Close() error {
	s.mu.Lock()
	s.closing = true
	if s.cancelWait != nil {
		s.cancelWait()
	}
	s.mu.Unlock()
	_ = s.enter(context.Background())
	defer s.leave()
	return s.releaseLocked()
}

// Lease returns the slot's current lease, or nil. It never waits. By the
// time the caller looks at it the slot may have changed; use it for
// inspection and for checking loss, not to release.
func (s *Slot) Lease() *Lease { return s.lease.Load() }
