package lockengine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockfs/lockfs/internal/mapshrink"
)

// Queue is the Engine: a fair FIFO queue per name in front of a Backend.
//
// Within the process, waiters of a name are granted in arrival order;
// consecutive shared requests at the head are granted together, and a shared
// request that arrives while an exclusive one waits queues behind it, so
// writers are never starved. Only the head of a name's queue talks to the
// Backend, so waiters cost one backend call in flight per name, not one each.
type Queue struct {
	b         Backend
	log       *slog.Logger
	lockDelay time.Duration
	obs       Observer

	mu      sync.Mutex
	entries map[string]*entry // guarded by mu
	peak    int               // guarded by mu; entries' largest length since shrunk (mapshrink)
	limits  map[string]int    // guarded by mu; SetLimit values above 1
	closed  bool              // guarded by mu
	// idleHint counts entries that went idle since idle ones were last
	// removed (an over-estimate: an entry may go idle several times).
	idleHint atomic.Int64

	inflight sync.WaitGroup // backend calls made outside entry locks
}

var _ Engine = (*Queue)(nil)

// grantWaiter grants w a lease in g and wakes it. Break's lock-delay
// request marks g as the engine's delay group. Called with e.mu held.
func (q *Queue) grantWaiter(e *entry, g *group, w *waiter, now stamp) {
	if w.delay {
		g.delay = true
	}
	w.lease = q.grant(e, g, w.mode, w.owner, now)
	q.obs.Granted(e.name, w.mode, now.Sub(w.since))
	close(w.ready)
}

// QueueOptions configure a Queue. The zero value gives the defaults.
type QueueOptions struct {
	// Log receives the Queue's warnings (locks lost, acquisitions
	// failed, locks broken); nil discards them.
	Log *slog.Logger
	// LockDelay is how long a name stays unavailable after Break, so
	// that a stuck holder that wakes up cannot act at once while another
	// holder already does (Chubby's lock-delay). Zero means
	// DefaultLockDelay; NoLockDelay (any negative value) means none.
	LockDelay time.Duration
	// Observer, if not nil, is told of grants, releases and losses (for
	// metrics).
	Observer Observer
}

// NoLockDelay, as QueueOptions.LockDelay, makes a broken name available
// to waiters at once.
const NoLockDelay time.Duration = -1

// NewQueue returns an Engine that grants locks through b, configured by
// opts. The Queue owns b: Close closes it.
func NewQueue(b Backend, opts QueueOptions) *Queue {
	q := &Queue{b: b, log: opts.Log, lockDelay: opts.LockDelay, obs: opts.Observer,
		entries: make(map[string]*entry)}
	if q.log == nil {
		q.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case q.lockDelay == 0:
		q.lockDelay = DefaultLockDelay
	case q.lockDelay < 0:
		q.lockDelay = 0
	}
	if q.obs == nil {
		q.obs = nopObserver{}
	}
	return q
}

// Acquire implements Engine.
func (q *Queue) Acquire(ctx context.Context, name string, mode Mode) (*Lease, error) {
	return q.acquire(ctx, name, mode, false)
}

// TryAcquire implements Engine.
func (q *Queue) TryAcquire(ctx context.Context, name string, mode Mode) (*Lease, error) {
	return q.acquire(ctx, name, mode, true)
}

// acquire is Acquire (try false) and TryAcquire (try true). It is split
// in two so that a request that waits parks on a shallow stack: the FUSE
// request goroutine of a blocked open(2) keeps its stack for as long as it
// waits, and that stack only stays at its smallest sizes when the frames
// below the wait are small (see docs/benchmarks.md, Memory). enqueue does
// everything but the wait, in frames that are gone once it returns.
func (q *Queue) acquire(ctx context.Context, name string, mode Mode, try bool) (*Lease, error) {
	l, e, w, err := q.enqueue(ctx, name, mode, try)
	if w == nil {
		if e != nil {
			q.unref(e)
		}
		return l, err
	}
	return q.wait(ctx, e, w)
}

// enqueue grants the request at once when it can, or fails it (always
// when try is set and the name cannot be granted at once), returning a nil
// waiter; otherwise it queues it and returns the waiter. Once it has
// referenced the name's entry it returns it, with that reference, which
// the caller drops (or hands to wait).
//
//go:noinline
func (q *Queue) enqueue(ctx context.Context, name string, mode Mode, try bool) (*Lease, *entry, *waiter, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, nil, err
	}
	if !mode.Valid() {
		return nil, nil, nil, fmt.Errorf("lock %q: %w: %d", name, ErrInvalidMode, mode)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, nil, nameErr(name, err)
	}
	owner, _ := OwnerFrom(ctx)
	start := clockNow()
	e, err := q.ref(name)
	if err != nil {
		return nil, nil, nil, err
	}

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, e, nil, ErrClosed
	}
	var w *waiter
	if len(e.waiters) == 0 && e.busy == notBusy {
		switch {
		case e.group == nil:
			// Nobody in this process holds or wants the name: one
			// non-blocking attempt at the backend. Requests arriving
			// meanwhile queue behind this one.
			l, err := q.tryInline(ctx, e, mode, owner, start)
			if l != nil || err != nil || try {
				q.dispatch(e)
				e.mu.Unlock()
				if l == nil && err == nil {
					err = nameErr(name, ErrWouldBlock)
				}
				l, err = unlessEnded(ctx, name, l, err)
				return l, e, nil, err
			}
			// Held elsewhere: wait at the head of the queue, ahead of
			// anyone who queued during the attempt.
			w = newWaiter(mode, owner, start)
			e.waiters = slices.Insert(e.waiters, 0, w)
		case e.admits(e.group, mode):
			l, err, joined := q.joinNow(e, mode, owner, start)
			if joined {
				q.dispatch(e) // requests that queued during a Bump
				e.mu.Unlock()
				l, err = unlessEnded(ctx, name, l, err)
				return l, e, nil, err
			}
			// The group changed during the Bump: queue.
		}
	}
	if w == nil {
		switch {
		case e.closed:
			// Closed while joinNow's Bump left e.mu.
			e.mu.Unlock()
			return nil, e, nil, ErrClosed
		case try:
			e.mu.Unlock()
			return nil, e, nil, nameErr(name, ErrWouldBlock)
		}
		w = newWaiter(mode, owner, start)
		e.waiters = append(e.waiters, w)
	}
	q.dispatch(e)
	e.mu.Unlock()
	return nil, e, w, nil
}

// wait waits for w, queued on e by enqueue, to be granted or failed, or
// for ctx to end; it drops the reference to e that enqueue took. Its frame
// is the one a blocked request parks in: keep it small.
//
//go:noinline
func (q *Queue) wait(ctx context.Context, e *entry, w *waiter) (*Lease, error) {
	defer q.unref(e)
	select {
	case <-w.ready:
		if w.lease == nil || ctx.Err() == nil {
			return w.lease, w.err
		}
		// Both were ready: the caller's end wins, and the grant is
		// undone below.
	case <-ctx.Done():
	}
	q.abandon(e, w)
	return nil, nameErr(e.name, ctx.Err())
}

// abandon takes back w, whose caller gave up: it leaves the queue, or the
// grant it got meanwhile is undone.
func (q *Queue) abandon(e *entry, w *waiter) {
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
}

// unlessEnded returns what acquire grants, unless the caller's ctx ended
// while the grant was being made (a backend call, a Bump): then the grant
// is undone and the caller gets the context's error, as for a request that
// was cancelled while it waited. Called without e.mu.
func unlessEnded(ctx context.Context, name string, l *Lease, err error) (*Lease, error) {
	if l != nil && ctx.Err() != nil {
		_ = l.Release()
		return nil, nameErr(name, ctx.Err())
	}
	return l, err
}

// tryInline makes one non-blocking backend attempt for an uncontended
// request. Called and returns with e.mu held, releasing it during the
// call. It returns the lease, or a nil lease and nil error when the name is
// held elsewhere, or the backend's error.
func (q *Queue) tryInline(ctx context.Context, e *entry, mode Mode, owner Owner, start stamp) (*Lease, error) {
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
			q.obs.Granted(e.name, mode, g.since.Sub(start))
			return q.grant(e, g, mode, owner, g.since), nil
		}
		q.unlockHold(e, hold)
		return nil, nil
	case errors.Is(err, ErrWouldBlock):
		return nil, nil
	}
	return nil, err
}

// handoff grants the head waiter at once when the backend can grant it
// without waiting, instead of waking a worker goroutine: a release hands
// the name over in the releasing call. Called and returns with e.mu held,
// releasing it during the backend call; the caller dispatches afterwards.
func (q *Queue) handoff(e *entry) {
	if e.closed || e.group != nil || e.busy != notBusy || len(e.waiters) == 0 {
		return
	}
	w := e.waiters[0]
	g := &group{mode: w.mode}
	e.busy = busyInline
	q.inflight.Add(1)
	e.mu.Unlock()
	hold, err := q.b.TryLock(context.Background(), e.name, w.mode, q.lostFunc(e, g))
	e.mu.Lock()
	q.inflight.Done()
	e.busy = notBusy
	if err != nil {
		return // held elsewhere, or failing: the worker retries and reports
	}
	if e.closed || len(e.waiters) == 0 || e.waiters[0] != w || !q.install(e, g, hold) {
		_ = q.unlockHold(e, hold)
		return
	}
	e.popWaiter()
	q.grantWaiter(e, g, w, g.since)
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
	g.since = clockNow()
	e.group = g
	return true
}

// grant adds a lease to g. Called with e.mu held by a caller that holds a
// reference to e (so refs > 0).
func (q *Queue) grant(e *entry, g *group, mode Mode, owner Owner, now stamp) *Lease {
	l := &Lease{q: q, e: e, g: g, mode: mode, owner: owner, token: g.token, granted: now}
	g.leases.add(l)
	e.refs.Add(1)
	return l
}

// needsBump reports whether a request in mode joining g needs a token of
// its own: a second or later exclusive holder of a semaphore. Called with
// e.mu held.
func needsBump(g *group, mode Mode) bool {
	return mode == Exclusive && g.leases.n > 0
}

// joinNow adds a lease in mode to the current group, which admits it, for
// an Acquire that found no queue and nothing busy. When the request needs
// a token of its own (needsBump) it bumps the hold first, without e.mu
// (see bump); joined is false when the group no longer admits the request
// afterwards, and the caller queues it. Called and returns with e.mu held
// by a caller that holds a reference to e.
func (q *Queue) joinNow(e *entry, mode Mode, owner Owner, start stamp) (l *Lease, err error, joined bool) {
	g := e.group
	if needsBump(g, mode) {
		tok, err := q.bump(e, g.hold)
		switch {
		case e.closed:
			return nil, ErrClosed, true
		case err != nil && q.lostOnBump(e, g, err):
			// Wait for a new grant. lostOnBump gave the hold back
			// without e.mu, so Close may have run meanwhile: the
			// caller checks before it queues.
			return nil, nil, false
		case err != nil:
			return nil, fmt.Errorf("lock %q: %w", e.name, err), true
		case e.group != g || !e.admits(g, mode):
			return nil, nil, false // downgraded or limit lowered meanwhile
		}
		g.token = tok
	}
	now := clockNow()
	l = q.grant(e, g, mode, owner, now)
	q.obs.Granted(e.name, mode, now.Sub(start))
	return l, nil, true
}

// lostOnBump handles a Bump that failed because the hold is gone: the
// backend can no longer prove it (its loss report may not have reached the
// Queue yet, since losses wait for the bump). The group is lost now, and
// the request that needed the bump waits for a new grant instead of
// failing. It reports whether it did so. Called with e.mu held; releases
// it while the hold is given back.
func (q *Queue) lostOnBump(e *entry, g *group, err error) bool {
	if e.closed || e.group != g || g.hold.Valid() {
		return false
	}
	q.loseGroup(e, g, fmt.Errorf("%w: bump: %w", ErrLost, err))
	return true
}

// bump asks the backend for a new token for hold. It is a backend call
// (one etcd transaction, a write to the lock file), so it is made without
// e.mu: the entry is busyBump meanwhile, which keeps every other backend
// call for the name out and makes Release, losses, Break and Close wait
// (waitBump), so the hold stays the one it was. Inspect and Snapshot do
// not wait. Called and returns with e.mu held and e.busy == notBusy.
func (q *Queue) bump(e *entry, hold Hold) (uint64, error) {
	e.busy = busyBump
	q.inflight.Add(1)
	e.mu.Unlock()
	tok, err := hold.Bump()
	e.mu.Lock()
	q.inflight.Done()
	e.endBump()
	return tok, err
}

// startBump bumps g's hold in the background for the waiter at the head
// of the queue, an exclusive request joining the semaphore group g
// (dispatch must not block on the backend). Called with e.mu held and
// e.busy == notBusy.
func (q *Queue) startBump(e *entry, g *group) {
	e.busy = busyBump
	e.refs.Add(1)
	q.inflight.Add(1)
	go q.bumpFor(e, g)
}

// bumpFor is startBump's goroutine: it grants the head waiter a lease of
// g with the new token (or fails it with the backend's error), when the
// head still is such a request.
func (q *Queue) bumpFor(e *entry, g *group) {
	defer q.inflight.Done()
	defer q.unref(e)
	tok, err := g.hold.Bump()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.endBump()
	if e.closed {
		return
	}
	if err != nil && q.lostOnBump(e, g, err) {
		if !e.closed {
			q.dispatch(e) // the head waiter waits for a new grant
		}
		return
	}
	if e.group == g && len(e.waiters) > 0 {
		w := e.waiters[0]
		if !w.delay && e.admits(g, w.mode) && needsBump(g, w.mode) {
			e.popWaiter()
			if err != nil {
				w.err = fmt.Errorf("lock %q: %w", e.name, err)
			} else {
				g.token = tok
				now := clockNow()
				w.lease = q.grant(e, g, w.mode, w.owner, now)
				q.obs.Granted(e.name, w.mode, now.Sub(w.since))
			}
			close(w.ready)
		}
	}
	q.dispatch(e)
}

// dispatch grants what can be granted to the waiters at the head of the
// queue and makes sure a worker is acquiring for the head if needed.
// Called with e.mu held.
func (q *Queue) dispatch(e *entry) {
	for len(e.waiters) > 0 {
		w := e.waiters[0]
		if g := e.group; g != nil {
			if w.delay || !e.admits(g, w.mode) {
				return // wait for the current holders to leave
			}
			if needsBump(g, w.mode) {
				if e.busy == notBusy {
					q.startBump(e, g)
				}
				return // the bump grants it and dispatches again
			}
			e.popWaiter()
			q.grantWaiter(e, g, w, clockNow())
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
		return // busyInline, busyUnlock and busyBump dispatch when they finish
	}
	if e.busy == busyWorker {
		e.worker.cancel()
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
		e.popWaiter()
		q.grantWaiter(e, g, w, g.since)
	case err == nil:
		// Granted after the waiters that wanted it went away.
		_ = q.unlockHold(e, hold)
	case cancelled:
	default:
		if errors.Is(err, ErrNoDir) || errors.Is(err, ErrIsDir) {
			// The caller's mistake (or a directory removed meanwhile),
			// not the backend's failure.
			q.log.Debug("lock failed", "lock", e.name, "mode", wk.mode, "err", err)
		} else {
			q.log.Warn("lock failed", "lock", e.name, "mode", wk.mode, "err", err)
		}
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
// When Break handed the hold on to its lock-delay group (g.heir), that
// group is the one that loses it.
func (q *Queue) lostFunc(e *entry, g *group) func(error) {
	return func(err error) {
		if !errors.Is(err, ErrLost) {
			err = fmt.Errorf("%w: %w", ErrLost, err)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		e.waitBump()
		for g.heir != nil {
			g = g.heir
		}
		if g.lostErr != nil {
			return
		}
		g.lostErr = err
		if e.group != g {
			return // not installed yet (install undoes it) or already gone
		}
		q.loseGroup(e, g, err)
		if !e.closed {
			q.dispatch(e)
		}
	}
}

// loseGroup ends every lease of the current group g with err (wrapping
// ErrLost) and gives its hold back. The leases stay listed, as lost, until
// their holders release them. Called with e.mu held; releases it while
// the hold is given back.
func (q *Queue) loseGroup(e *entry, g *group, err error) {
	g.lostErr = err
	e.group = nil
	e.lost = append(e.lost, g)
	q.log.Warn("lock lost", "lock", e.name, "mode", g.mode, "token", g.token,
		"holders", g.leases.n, "err", err)
	for l := g.leases.head; l != nil; l = l.next {
		q.obs.Lost(e.name, l.mode, err)
	}
	g.leases.endAll(err)
	_ = q.unlockHold(e, g.hold)
}

// release ends l. Called once per lease, by Lease.Release.
func (q *Queue) release(l *Lease) error {
	e, g := l.e, l.g
	var err error
	e.mu.Lock()
	e.waitBump()
	if g.leases.remove(l) {
		l.end(ErrReleased)
		q.obs.Released(e.name, l.mode, clockNow().Sub(l.granted))
		switch {
		case g.leases.n == 0 && e.group == g:
			e.group = nil
			err = q.unlockHold(e, g.hold)
			if !e.closed {
				q.handoff(e)
				q.dispatch(e)
			}
		case e.group == g && !e.closed:
			q.dispatch(e) // a semaphore slot may have freed
		case g.leases.n == 0 && g.lostErr != nil:
			e.dropLost(g)
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
		e = newEntry(name, max(q.limits[name], 1))
		q.entries[name] = e
	}
	e.refs.Add(1)
	return e, nil
}

// idleEntries is how many entries may go idle before the idle ones are
// removed. Keeping recently used entries saves an allocation and two map
// updates per uncontended acquisition of a name used again.
const idleEntries = 4096

func (q *Queue) unref(e *entry) {
	if e.refs.Add(-1) != 0 {
		return
	}
	if q.idleHint.Add(1) < idleEntries {
		return
	}
	q.ForgetIdle()
}

// ForgetIdle drops what the Queue keeps of names that nobody holds, waits
// for or is acquiring, and gives back the memory of its name table when a
// burst made it grow. The Queue keeps up to idleEntries such names so that
// a name used again costs no allocation; after a burst (10,000 names held
// and released) they are memory an idle daemon keeps for nothing. Locks are
// unaffected: a name's state is made again on its next use. Safe to call
// at any time, also after Close; the daemon calls it periodically, before
// it returns free memory to the OS.
func (q *Queue) ForgetIdle() {
	q.mu.Lock()
	for name, e := range q.entries {
		if e.refs.Load() == 0 {
			delete(q.entries, name)
		}
	}
	q.entries = mapshrink.Shrink(q.entries, &q.peak)
	q.idleHint.Store(0)
	q.mu.Unlock()
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
		e.waitBump()
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
