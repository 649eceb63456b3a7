package lockengine

import (
	"context"
	"fmt"
	"time"
)

// DefaultLockDelay is how long a broken lock stays unavailable by default.
const DefaultLockDelay = 5 * time.Second

// SetLimit implements Engine.
func (q *Queue) SetLimit(name string, n int) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if n < 1 {
		return fmt.Errorf("lock %q: %w: limit %d is below 1", name, ErrInvalidLimit, n)
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if n == 1 {
		delete(q.limits, name)
	} else {
		if q.limits == nil {
			q.limits = make(map[string]int)
		}
		q.limits[name] = n
	}
	e := q.entries[name]
	if e != nil {
		e.refs.Add(1)
	}
	q.mu.Unlock()
	if e == nil {
		return nil
	}
	defer q.unref(e)
	e.mu.Lock()
	e.limit = n
	if !e.closed {
		q.dispatch(e) // a raised limit admits waiters at once
	}
	e.mu.Unlock()
	return nil
}

// Limit implements Engine.
func (q *Queue) Limit(name string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return max(q.limits[name], 1)
}

// Break implements Engine.
func (q *Queue) Break(ctx context.Context, name string, by Owner) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	q.mu.Lock()
	e := q.entries[name]
	if e != nil && !q.closed {
		e.refs.Add(1)
	}
	q.mu.Unlock()
	if e == nil {
		return fmt.Errorf("lock %q: %w", name, ErrNotHeld)
	}
	defer q.unref(e)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waitBump()
	g := e.group
	if g == nil || e.closed {
		return fmt.Errorf("lock %q: %w", name, ErrNotHeld)
	}
	if g.delay {
		// Only the engine's own lease holds it: breaking that again
		// would only extend the lock-delay.
		q.log.Warn("lock break refused", "lock", name, "uid", by.UID, "pid", by.PID,
			"reason", "in its lock-delay after a break")
		return fmt.Errorf("lock %q: %w", name, ErrLockDelay)
	}
	if reason := breakDenied(g, by); reason != "" {
		q.log.Warn("lock break refused", "lock", name, "uid", by.UID, "pid", by.PID, "reason", reason)
		return fmt.Errorf("lock %q: %w: uid %d %s", name, ErrPermission, by.UID, reason)
	}
	cause := fmt.Errorf("%w: %w by uid %d pid %d", ErrLost, ErrBroken, by.UID, by.PID)
	q.log.Warn("lock broken", "lock", name, "mode", g.mode, "token", g.token, "holders", g.leases.n,
		"uid", by.UID, "pid", by.PID, "lock_delay", q.lockDelay)
	now := clockNow()
	if g.mode == Exclusive {
		// Keep the backend hold across the break, so no other process
		// gets in before the delay: end the leases (every holder of a
		// semaphore too), bump the token, and hand the hold to a group
		// of the engine's own that nothing joins (delay).
		g.lostErr = cause
		e.group = nil
		e.lost = append(e.lost, g)
		for l := g.leases.head; l != nil; l = l.next {
			q.obs.Lost(e.name, l.mode, cause)
		}
		g.leases.endAll(cause)
		// No group is current during the Bump, and busyBump keeps every
		// other backend call, Release and loss of the name waiting.
		tok, err := q.bump(e, g.hold)
		if err == nil {
			ng := &group{mode: Exclusive, hold: g.hold, token: tok, since: now, delay: true}
			g.heir = ng
			e.group = ng
			q.delayRelease(e, q.grant(e, ng, Exclusive, by, now))
			return nil
		}
		q.log.Warn("lock break: bump token", "lock", name, "err", err)
		_ = q.unlockHold(e, g.hold)
	} else {
		q.loseGroup(e, g, cause)
	}
	if e.closed {
		return nil
	}
	// Take the name exclusively ahead of every waiter: this bumps the
	// token, and keeps this engine's waiters out for the lock-delay (the
	// group it gets is marked delay: nothing joins it, not even a
	// semaphore's waiters). Another process may get the name first in
	// between.
	w := newWaiter(Exclusive, by, now)
	w.delay = true
	e.waiters = append([]*waiter{w}, e.waiters...)
	e.refs.Add(1)
	q.inflight.Add(1)
	go func() {
		defer q.inflight.Done()
		defer q.unref(e)
		<-w.ready
		if w.lease != nil {
			q.holdFor(w.lease, q.lockDelay)
		}
	}()
	q.dispatch(e)
	return nil
}

// breakDenied returns why by may not break the name whose current group
// is g, or "" when it may: root may break any lock, anyone else only a lock
// all of whose current leases have by's UID (a lone holder breaking its
// own lock). A co-holder of a shared lock or of a semaphore may not end
// the others' leases; it releases its own by closing its descriptor.
// Called with e.mu held.
func breakDenied(g *group, by Owner) string {
	if by.UID == 0 {
		return ""
	}
	mine, others := 0, 0
	for l := g.leases.head; l != nil; l = l.next {
		if l.owner.UID == by.UID {
			mine++
		} else {
			others++
		}
	}
	switch {
	case others == 0:
		return ""
	case mine == 0:
		return "is neither root nor a holder"
	}
	return fmt.Sprintf("is not root and holds %d of %d leases (other users hold the rest)", mine, mine+others)
}

// delayRelease releases l after the lock-delay, in the background. Called
// with e.mu held.
func (q *Queue) delayRelease(e *entry, l *Lease) {
	q.inflight.Add(1)
	go func() {
		defer q.inflight.Done()
		q.holdFor(l, q.lockDelay)
	}()
}

// holdFor releases l after d, or as soon as it ends otherwise.
func (q *Queue) holdFor(l *Lease, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-l.Done():
	}
	_ = l.Release()
}
