package lockengine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// entry is the state of one name. It lives in Queue.entries while anything
// refers to it (an Acquire in progress, a waiter, a lease or a worker), and
// a while longer when idle.
type entry struct {
	name string
	// refs counts references. It goes up from zero only under Queue.mu;
	// an entry whose refs are zero is idle and may be removed from the map
	// (under Queue.mu).
	refs atomic.Int64

	mu      sync.Mutex
	group   *group    // guarded by mu; the current holders, nil when none
	waiters []*waiter // guarded by mu; FIFO
	busy    busyKind  // guarded by mu; what is calling the backend for this name
	// bumped is signalled (with mu as its lock) when a busyBump ends; see
	// waitBump.
	bumped sync.Cond
	worker *worker  // guarded by mu; set when busy == busyWorker
	lost   []*group // guarded by mu; lost groups whose leases are not all released
	limit  int      // guarded by mu; exclusive holders allowed at once (SetLimit), 1 by default
	closed bool     // guarded by mu
}

// newEntry returns the entry of name with the given limit.
func newEntry(name string, limit int) *entry {
	e := &entry{name: name, limit: limit}
	e.bumped.L = &e.mu
	return e
}

// admits reports whether a request in mode may join the current group g
// (not lost): shared joins shared; exclusive joins exclusive while the
// name's limit allows more holders. Nothing joins the engine's own
// lock-delay group of a broken name. Called with e.mu held.
func (e *entry) admits(g *group, mode Mode) bool {
	if g.mode != mode || g.delay {
		return false
	}
	return mode == Shared || g.leases.n < e.limit
}

// waitBump waits until no Bump is in progress for the name. Called and
// returns with e.mu held, releasing it while waiting. Whatever gives a
// hold back, ends or reshapes a group (Release, a loss, Break, Close)
// calls it first, so that the hold being bumped stays the current group's
// and no second backend call for the name starts meanwhile.
func (e *entry) waitBump() {
	for e.busy == busyBump {
		e.bumped.Wait()
	}
}

// busyKind says what is calling the backend for a name. Backend calls are
// made without the entry lock (they may be network round trips), and while
// one is in progress no other starts for the name: a Backend sees at most
// one call and one hold per name. A group is only ever current while the
// entry is notBusy or busyBump (a Bump of the current group's hold for a
// joining semaphore holder; during Break's Bump no group is current).
type busyKind uint8

const (
	notBusy    busyKind = iota
	busyInline          // an uncontended Acquire's TryLock
	busyWorker          // the worker's Lock, for the head of the queue
	busyUnlock          // a hold being given back
	busyBump            // a Hold.Bump: a semaphore holder joining, or Break
)

// group is the set of leases granted under one backend Hold: one exclusive
// lease, or any number of shared ones.
type group struct {
	mode  Mode
	hold  Hold      // set when installed
	token uint64    // hold.Token(), cached
	since time.Time // when the hold was granted
	// delay marks the engine's own group that keeps a broken name for the
	// lock-delay: nothing joins it and Break refuses it (ErrLockDelay).
	// Set before the group is current or under entry.mu.
	delay bool
	// heir is the lock-delay group Break handed this group's hold to
	// (guarded by entry.mu); the hold's lost callback follows it.
	heir *group
	// guarded by entry.mu:
	leases  leaseList // unreleased leases
	lostErr error     // set when the backend reported the hold lost
}

// leaseList is an intrusive doubly linked list of leases, so a grant costs
// no allocation beyond the Lease itself. It is in grant order: head is the
// earliest granted lease still listed, so inspection lists holders in a
// stable order whose first entry changes only when that holder leaves.
type leaseList struct {
	head, tail *Lease
	n          int
}

// add appends l at the tail.
func (ll *leaseList) add(l *Lease) {
	l.prev, l.next = ll.tail, nil
	if ll.tail != nil {
		ll.tail.next = l
	} else {
		ll.head = l
	}
	ll.tail = l
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
	} else {
		ll.tail = l.prev
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
	owner Owner
	delay bool          // Break's request for the lock-delay: its group is marked delay
	since time.Time     // when the request was made
	ready chan struct{} // closed once lease or err is set (under entry.mu)
	lease *Lease
	err   error
}

func newWaiter(mode Mode, owner Owner, since time.Time) *waiter {
	return &waiter{mode: mode, owner: owner, since: since, ready: make(chan struct{})}
}

type worker struct {
	mode   Mode
	cancel context.CancelFunc
}

func (e *entry) removeWaiter(w *waiter) {
	for i, x := range e.waiters {
		if x == w {
			e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
			return
		}
	}
}

func (e *entry) dropLost(g *group) {
	for i, x := range e.lost {
		if x == g {
			e.lost = append(e.lost[:i], e.lost[i+1:]...)
			return
		}
	}
}
