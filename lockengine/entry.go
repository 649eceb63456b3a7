package lockengine

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
)

// entry is the state of one name. It lives in Queue.entries while anything
// refers to it (an Acquire in progress, a waiter, a lease or a worker), and
// a while longer when idle.
//
// Its fields are ordered to pack it into 112 bytes: one is kept per name in
// use (see docs/benchmarks.md, Memory).
type entry struct {
	name string
	mu   sync.Mutex
	// refs counts references. It goes up from zero only under Queue.mu;
	// an entry whose refs are zero is idle and may be removed from the map
	// (under Queue.mu).
	refs    atomic.Int32
	busy    busyKind  // guarded by mu; what is calling the backend for this name
	closed  bool      // guarded by mu
	group   *group    // guarded by mu; the current holders, nil when none
	waiters []*waiter // guarded by mu; FIFO
	// bumped, when not nil, is closed when the busyBump in progress ends:
	// made by the first waitBump that waits for it (a Bump is rare: a
	// semaphore holder joining, or Break), closed by endBump. Guarded by
	// mu.
	bumped chan struct{}
	worker *worker  // guarded by mu; set when busy == busyWorker
	lost   []*group // guarded by mu; lost groups whose leases are not all released
	limit  int      // guarded by mu; exclusive holders allowed at once (SetLimit), 1 by default
}

// newEntry returns the entry of name with the given limit.
func newEntry(name string, limit int) *entry {
	return &entry{name: name, limit: limit}
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
		if e.bumped == nil {
			e.bumped = make(chan struct{})
		}
		c := e.bumped
		e.mu.Unlock()
		<-c
		e.mu.Lock()
	}
}

// endBump ends the busyBump in progress and wakes its waitBump callers.
// Called with e.mu held.
func (e *entry) endBump() {
	e.busy = notBusy
	if e.bumped != nil {
		close(e.bumped)
		e.bumped = nil
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
	hold  Hold   // set when installed
	token uint64 // hold.Token(), cached
	since stamp  // when the hold was granted
	// heir is the lock-delay group Break handed this group's hold to
	// (guarded by entry.mu); the hold's lost callback follows it.
	heir *group
	// guarded by entry.mu:
	leases  leaseList // unreleased leases
	lostErr error     // set when the backend reported the hold lost
	mode    Mode
	// delay marks the engine's own group that keeps a broken name for the
	// lock-delay: nothing joins it and Break refuses it (ErrLockDelay).
	// Set before the group is current or under entry.mu.
	delay bool
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
	ready chan struct{} // closed once lease or err is set (under entry.mu)
	lease *Lease
	err   error
	since stamp // when the request was made
	owner Owner
	mode  Mode
	delay bool // Break's request for the lock-delay: its group is marked delay
}

func newWaiter(mode Mode, owner Owner, since stamp) *waiter {
	return &waiter{mode: mode, owner: owner, since: since, ready: make(chan struct{})}
}

type worker struct {
	mode   Mode
	cancel context.CancelFunc
}

// popWaiter removes the head of the queue. The slot it leaves is cleared
// and an emptied queue drops its array: a slice's array keeps every
// pointer in it alive, so a queue drained by reslicing would keep each
// served waiter (and through it its lease, group and hold) until the
// entry itself goes. Called with e.mu held.
func (e *entry) popWaiter() {
	e.waiters[0] = nil
	e.waiters = e.waiters[1:]
	if len(e.waiters) == 0 {
		e.waiters = nil
	}
}

// removeWaiter removes w from the queue, clearing the slot it leaves (see
// popWaiter). Called with e.mu held.
func (e *entry) removeWaiter(w *waiter) { e.waiters = without(e.waiters, w) }

// dropLost removes g from the lost groups. Called with e.mu held.
func (e *entry) dropLost(g *group) { e.lost = without(e.lost, g) }

// without returns s without its first x (slices.Delete clears the slot
// left at the end), and nil when that empties it, so that the array goes.
func without[T comparable](s []T, x T) []T {
	if i := slices.Index(s, x); i >= 0 {
		s = slices.Delete(s, i, i+1)
	}
	if len(s) == 0 {
		return nil
	}
	return s
}

// nameError is the error "lock NAME: err" of the request paths that fail
// often (would-block, cancelled): the message is built only if someone
// asks for it, so failing costs one small allocation and a shallow stack,
// where fmt.Errorf formats at once.
type nameError struct {
	name string
	err  error
}

// nameErr returns "lock NAME: err" (NAME quoted as %q does), wrapping err.
func nameErr(name string, err error) error { return &nameError{name: name, err: err} }

func (e *nameError) Error() string { return "lock " + strconv.Quote(e.name) + ": " + e.err.Error() }

func (e *nameError) Unwrap() error { return e.err }
