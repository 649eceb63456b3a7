package lockengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Queue is the Engine: a fair FIFO queue per name in front of a Backend.
//
// Within the process, waiters of a name are granted in arrival order;
// consecutive shared requests at the head are granted together, and a shared
// request that arrives while an exclusive one waits queues behind it, so
// writers are never starved. Only the head of a name's queue talks to the
// Backend, so waiters cost one backend call in flight per name, not one each.
type Queue struct {
	b   Backend
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry // guarded by mu
	closed  bool              // guarded by mu

	inflight sync.WaitGroup // backend calls made outside entry locks
}

var _ Engine = (*Queue)(nil)

// entry is the state of one name. It lives in Queue.entries while anything
// refers to it (an Acquire in progress, a waiter, a lease or a worker).
type entry struct {
	name string
	// refs counts references. It goes up from zero only under Queue.mu;
	// an entry whose refs reach zero is idle and is removed from the map.
	refs atomic.Int64

	mu      sync.Mutex
	group   *group    // guarded by mu; the current holders, nil when none
	waiters []*waiter // guarded by mu; FIFO
	busy    busyKind  // guarded by mu; what is calling the backend for this name
	worker  *worker   // guarded by mu; set when busy == busyWorker
	closed  bool      // guarded by mu
}

// busyKind says what is calling the backend for a name. Backend calls are
// made without the entry lock (they may be network round trips), and while
// one is in progress no other starts for the name: a Backend sees at most
// one call and one hold per name. A group is only ever current while the
// entry is notBusy.
type busyKind uint8

const (
	notBusy    busyKind = iota
	busyInline          // an uncontended Acquire's TryLock
	busyWorker          // the worker's Lock, for the head of the queue
	busyUnlock          // a hold being given back
)

// group is the set of leases granted under one backend Hold: one exclusive
// lease, or any number of shared ones.
type group struct {
	mode  Mode
	hold  Hold      // set when installed
	token uint64    // hold.Token(), cached
	since time.Time // when the hold was granted
	// guarded by entry.mu:
	leases  leaseList // unreleased leases
	lostErr error     // set when the backend reported the hold lost
}

// leaseList is an intrusive doubly linked list of leases, so a grant costs
// no allocation beyond the Lease itself.
type leaseList struct {
	head *Lease
	n    int
}

func (ll *leaseList) add(l *Lease) {
	l.next = ll.head
	if ll.head != nil {
		ll.head.prev = l
	}
	ll.head = l
	l.listed = true
	ll.n++
}

// remove unlinks l and reports whether it was listed.
func (ll *leaseList) remove(l *Lease) bool {
	if !l.listed {
		return false
	}
	if l.prev != nil {
		l.prev.next = l.next
	} else {
		ll.head = l.next
	}
	if l.next != nil {
		l.next.prev = l.prev
	}
	l.prev, l.next, l.listed = nil, nil, false
	ll.n--
	return true
}

// endAll ends every listed lease with err; they stay listed until released.
func (ll *leaseList) endAll(err error) {
	for l := ll.head; l != nil; l = l.next {
		l.end(err)
	}
}

type waiter struct {
	mode  Mode
	ready chan struct{} // closed once lease or err is set (under entry.mu)
	lease *Lease
	err   error
}

type worker struct {
	mode   Mode
	cancel context.CancelFunc
}

// NewQueue returns an Engine that grants locks through b. A nil log
// discards log output. The Queue owns b: Close closes it.
func NewQueue(b Backend, log *slog.Logger) *Queue {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Queue{b: b, log: log, entries: make(map[string]*entry)}
}

// Acquire implements Engine.
func (q *Queue) Acquire(ctx context.Context, name string, mode Mode) (*Lease, error) {
	return q.acquire(ctx, name, mode, false)
}

// TryAcquire implements Engine.
func (q *Queue) TryAcquire(ctx context.Context, name string, mode Mode) (*Lease, error) {
	return q.acquire(ctx, name, mode, true)
}

func (q *Queue) acquire(ctx context.Context, name string, mode Mode, try bool) (*Lease, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if !mode.Valid() {
		return nil, fmt.Errorf("lock %q: %w: %d", name, ErrInvalidMode, mode)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("lock %q: %w", name, err)
	}
	e, err := q.ref(name)
	if err != nil {
		return nil, err
	}
	defer q.unref(e)

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	var w *waiter
	if len(e.waiters) == 0 && e.busy == notBusy {
		switch {
		case e.group == nil:
			// Nobody in this process holds or wants the name: one
			// non-blocking attempt at the backend. Requests arriving
			// meanwhile queue behind this one.
			l, err := q.tryInline(ctx, e, mode)
			if l != nil || err != nil || try {
				q.dispatch(e)
				e.mu.Unlock()
				if l == nil && err == nil {
					err = fmt.Errorf("lock %q: %w", name, ErrWouldBlock)
				}
				return l, err
			}
			// Held elsewhere: wait at the head of the queue, ahead of
			// anyone who queued during the attempt.
			w = &waiter{mode: mode, ready: make(chan struct{})}
			e.waiters = append([]*waiter{w}, e.waiters...)
		case e.group.mode == Shared && mode == Shared:
			l := q.grant(e, e.group, mode, time.Now())
			e.mu.Unlock()
			return l, nil
		}
	}
	if w == nil {
		if try {
			e.mu.Unlock()
			return nil, fmt.Errorf("lock %q: %w", name, ErrWouldBlock)
		}
		w = &waiter{mode: mode, ready: make(chan struct{})}
		e.waiters = append(e.waiters, w)
	}
	q.dispatch(e)
	e.mu.Unlock()

	select {
	case <-w.ready:
		return w.lease, w.err
	case <-ctx.Done():
	}
	e.mu.Lock()
	select {
	case <-w.ready:
		// Granted (or failed) while the caller gave up: undo the grant.
		e.mu.Unlock()
		if w.lease != nil {
			_ = w.lease.Release()
		}
	default:
		e.removeWaiter(w)
		q.dispatch(e)
		e.mu.Unlock()
	}
	return nil, fmt.Errorf("lock %q: %w", name, ctx.Err())
}

// tryInline makes one non-blocking backend attempt for an uncontended
// request. Called and returns with e.mu held, releasing it during the
// call. It returns the lease, or a nil lease and nil error when the name is
// held elsewhere, or the backend's error.
func (q *Queue) tryInline(ctx context.Context, e *entry, mode Mode) (*Lease, error) {
	e.busy = busyInline
	q.inflight.Add(1)
	e.mu.Unlock()
	g := &group{mode: mode}
	hold, err := q.b.TryLock(ctx, e.name, mode, q.lostFunc(e, g))
	e.mu.Lock()
	q.inflight.Done()
	e.busy = notBusy
	switch {
	case e.closed:
		if err == nil {
			q.unlockHold(e, hold)
		}
		return nil, ErrClosed
	case err == nil:
		if q.install(e, g, hold) {
			return q.grant(e, g, mode, g.since), nil
		}
		q.unlockHold(e, hold)
		return nil, nil
	case errors.Is(err, ErrWouldBlock):
		return nil, nil
	}
	return nil, err
}

// unlockHold gives a hold back to the backend. Called and returns with
// e.mu held, releasing it during the call; the caller re-checks state.
func (q *Queue) unlockHold(e *entry, hold Hold) error {
	prev := e.busy
	e.busy = busyUnlock
	q.inflight.Add(1)
	e.mu.Unlock()
	err := hold.Unlock()
	e.mu.Lock()
	q.inflight.Done()
	e.busy = prev
	return err
}

// install makes g, just granted by the backend, the entry's current group.
// It returns false when the backend already reported the hold lost; the
// caller gives the hold back. Called with e.mu held and e.group == nil.
func (q *Queue) install(e *entry, g *group, hold Hold) bool {
	g.hold = hold
	if g.lostErr != nil {
		return false
	}
	g.token = hold.Token()
	g.since = time.Now()
	e.group = g
	return true
}

// grant adds a lease to g. Called with e.mu held by a caller that holds a
// reference to e (so refs > 0).
func (q *Queue) grant(e *entry, g *group, mode Mode, now time.Time) *Lease {
	l := &Lease{q: q, e: e, g: g, mode: mode, granted: now, done: make(chan struct{})}
	g.leases.add(l)
	e.refs.Add(1)
	return l
}

// dispatch grants what can be granted to the waiters at the head of the
// queue and makes sure a worker is acquiring for the head if needed.
// Called with e.mu held.
func (q *Queue) dispatch(e *entry) {
	for len(e.waiters) > 0 {
		w := e.waiters[0]
		if e.group != nil {
			if e.group.mode != Shared || w.mode != Shared {
				return // wait for the current holders to leave
			}
			e.waiters = e.waiters[1:]
			w.lease = q.grant(e, e.group, w.mode, time.Now())
			close(w.ready)
			continue
		}
		switch e.busy {
		case busyWorker:
			if e.worker.mode != w.mode {
				e.worker.cancel() // it dispatches again when it exits
			}
		case notBusy:
			q.startWorker(e, w.mode)
		}
		return // busyInline and busyUnlock dispatch when they finish
	}
	if e.busy == busyWorker {
		e.worker.cancel()
	}
}

func (e *entry) removeWaiter(w *waiter) {
	for i, x := range e.waiters {
		if x == w {
			e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
			return
		}
	}
}

// startWorker starts the one goroutine that waits for the backend on
// behalf of the head of e's queue. Called with e.mu held.
func (q *Queue) startWorker(e *entry, mode Mode) {
	ctx, cancel := context.WithCancel(context.Background())
	wk := &worker{mode: mode, cancel: cancel}
	e.worker, e.busy = wk, busyWorker
	e.refs.Add(1)
	q.inflight.Add(1)
	go q.workLoop(ctx, e, wk)
}

func (q *Queue) workLoop(ctx context.Context, e *entry, wk *worker) {
	defer q.inflight.Done()
	defer q.unref(e)
	g := &group{mode: wk.mode}
	hold, err := q.b.Lock(ctx, e.name, wk.mode, q.lostFunc(e, g))
	cancelled := ctx.Err() != nil
	wk.cancel()

	e.mu.Lock()
	defer e.mu.Unlock()
	e.worker, e.busy = nil, notBusy
	switch {
	case err == nil && !e.closed && len(e.waiters) > 0 && e.waiters[0].mode == wk.mode:
		if !q.install(e, g, hold) {
			// Lost before it was installed: dispatch starts over.
			_ = q.unlockHold(e, hold)
			break
		}
		w := e.waiters[0]
		e.waiters = e.waiters[1:]
		w.lease = q.grant(e, g, w.mode, g.since)
		close(w.ready)
	case err == nil:
		// Granted after the waiters that wanted it went away.
		_ = q.unlockHold(e, hold)
	case cancelled:
	default:
		q.log.Warn("lock failed", "lock", e.name, "mode", wk.mode, "err", err)
		for _, w := range e.waiters {
			w.err = err
			close(w.ready)
		}
		e.waiters = nil
	}
	if !e.closed {
		q.dispatch(e)
	}
}

// lostFunc returns the callback the backend calls when g's hold is lost.
func (q *Queue) lostFunc(e *entry, g *group) func(error) {
	return func(err error) {
		if !errors.Is(err, ErrLost) {
			err = fmt.Errorf("%w: %w", ErrLost, err)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if g.lostErr != nil {
			return
		}
		g.lostErr = err
		if e.group != g {
			return // not installed yet (install undoes it) or already gone
		}
		e.group = nil
		q.log.Warn("lock lost", "lock", e.name, "mode", g.mode, "token", g.token,
			"holders", g.leases.n, "err", err)
		g.leases.endAll(err)
		_ = q.unlockHold(e, g.hold)
		if !e.closed {
			q.dispatch(e)
		}
	}
}

// release ends l. Called once per lease, by Lease.Release.
func (q *Queue) release(l *Lease) error {
	e, g := l.e, l.g
	var err error
	e.mu.Lock()
	if g.leases.remove(l) {
		l.end(ErrReleased)
		if g.leases.n == 0 && e.group == g {
			e.group = nil
			err = q.unlockHold(e, g.hold)
			if !e.closed {
				q.dispatch(e)
			}
		}
	}
	e.mu.Unlock()
	q.unref(e)
	if err != nil {
		return fmt.Errorf("lock %q: release: %w", e.name, err)
	}
	return nil
}

func (q *Queue) ref(name string) (*entry, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil, ErrClosed
	}
	e := q.entries[name]
	if e == nil {
		e = &entry{name: name}
		q.entries[name] = e
	}
	e.refs.Add(1)
	return e, nil
}

func (q *Queue) unref(e *entry) {
	if e.refs.Add(-1) != 0 {
		return
	}
	q.mu.Lock()
	if e.refs.Load() == 0 && q.entries[e.name] == e {
		delete(q.entries, e.name)
	}
	q.mu.Unlock()
}

// Snapshot implements Engine.
func (q *Queue) Snapshot() []LockInfo {
	q.mu.Lock()
	es := make([]*entry, 0, len(q.entries))
	for _, e := range q.entries {
		es = append(es, e)
	}
	q.mu.Unlock()

	infos := make([]LockInfo, 0, len(es))
	for _, e := range es {
		e.mu.Lock()
		info := LockInfo{Name: e.name, Waiters: len(e.waiters)}
		if g := e.group; g != nil {
			info.Mode, info.Holders, info.Token, info.Since = g.mode, g.leases.n, g.token, g.since
		}
		e.mu.Unlock()
		if info.Holders > 0 || info.Waiters > 0 {
			infos = append(infos, info)
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos
}

// Close implements Engine. It is idempotent.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	es := make([]*entry, 0, len(q.entries))
	for _, e := range q.entries {
		es = append(es, e)
	}
	q.mu.Unlock()

	var holds []Hold
	for _, e := range es {
		e.mu.Lock()
		e.closed = true
		for _, w := range e.waiters {
			w.err = ErrClosed
			close(w.ready)
		}
		e.waiters = nil
		if e.busy == busyWorker {
			e.worker.cancel()
		}
		if g := e.group; g != nil {
			e.group = nil
			g.leases.endAll(ErrClosed)
			holds = append(holds, g.hold)
		}
		e.mu.Unlock()
	}
	for _, h := range holds {
		_ = h.Unlock()
	}
	q.inflight.Wait()
	return q.b.Close()
}
