// Package heartbeat runs the refresh-and-verify loop that keeps held locks
// fresh and notices when one is lost.
//
// One Loop serves any number of targets with a single goroutine, so holding
// many locks costs memory per lock, not a goroutine per lock. Every interval
// each target's Beat is called; Beat refreshes the lock's freshness and
// verifies that the lock is still the caller's. A Beat that reports
// ErrGone loses the target at once; a Beat that fails with any other error is
// retried every interval/4 and the target is lost after MaxFailures
// consecutive failures, so a lock whose refresh keeps failing is reported
// lost within one interval of the first failure.
package heartbeat

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockfs/lockfs/internal/mapshrink"
)

// DefaultInterval is the interval used when New is given zero.
const DefaultInterval = 10 * time.Second

// MaxFailures is how many consecutive failed beats lose a target.
const MaxFailures = 3

// ErrGone is wrapped by a Beat error that means the lock is definitely lost
// (its backing file was removed or replaced); no retry can help.
var ErrGone = errors.New("heartbeat: lock gone")

// ErrFailing is wrapped by the error passed to a lost callback after
// MaxFailures consecutive failed beats.
var ErrFailing = errors.New("heartbeat: refresh keeps failing")

// Target is one held lock.
type Target interface {
	// Beat refreshes and verifies the lock. It must be safe to call
	// concurrently with the holder's own use of the lock and must not
	// block for long.
	Beat() error
	// Lost is called at most once, from the loop's goroutine, with an
	// error wrapping ErrGone or ErrFailing. It may run concurrently with
	// or just after Stop.
	Lost(err error)
}

// Loop beats registered targets. The zero value is not usable; call New.
type Loop struct {
	interval time.Duration

	mu      sync.Mutex
	targets map[*Registration]struct{} // guarded by mu
	peak    int                        // guarded by mu; see mapshrink
	closed  bool                       // guarded by mu

	failures atomic.Uint64 // failed beats, ever
	epoch    time.Time     // base of the monotonic readings below
	coarse   atomic.Int64  // ns since epoch, updated every tick

	wake  chan struct{}
	donec chan struct{}
}

// Failures returns how many beats have failed since the loop started.
func (l *Loop) Failures() uint64 { return l.failures.Load() }

// Registration is a target's membership in a Loop.
type Registration struct {
	loop   *Loop
	target Target
	// guarded by loop.mu:
	next     int64 // ns since the loop's epoch
	failures int32 // consecutive failed beats
}

// New starts a loop that beats each target every interval (DefaultInterval
// when zero). Close stops it.
func New(interval time.Duration) *Loop {
	if interval <= 0 {
		interval = DefaultInterval
	}
	l := &Loop{
		interval: interval,
		targets:  make(map[*Registration]struct{}),
		wake:     make(chan struct{}, 1),
		donec:    make(chan struct{}),
	}
	l.epoch = time.Now()
	go l.beatLoop()
	return l
}

// since reads the monotonic clock, in ns since the loop started, so wall
// clock jumps never delay a beat.
func (l *Loop) since() int64 { return int64(time.Since(l.epoch)) }

// Interval returns the loop's beat interval.
func (l *Loop) Interval() time.Duration { return l.interval }

// Add registers t; its first beat comes within one interval. Add on a
// closed loop returns a registration that is never beaten.
func (l *Loop) Add(t Target) *Registration {
	r := new(Registration)
	l.Register(r, t)
	return r
}

// Register is Add with a Registration the caller allocated (for example
// embedded in the target), which must not be copied or reused afterwards.
func (l *Loop) Register(r *Registration, t Target) {
	// The loop's coarse clock is at most one tick old, so the first beat
	// comes early rather than late.
	*r = Registration{loop: l, target: t, next: l.coarse.Load() + int64(l.period())}
	l.mu.Lock()
	if !l.closed {
		l.targets[r] = struct{}{}
	}
	l.mu.Unlock()
}

// Stop removes the registration. It is idempotent. A beat already in
// progress may still finish, but no new beat starts.
func (r *Registration) Stop() {
	l := r.loop
	l.mu.Lock()
	delete(l.targets, r)
	l.targets = mapshrink.Shrink(l.targets, &l.peak)
	l.mu.Unlock()
}

// Close stops the loop and waits for its goroutine to exit. Registered
// targets are dropped without a lost call.
func (l *Loop) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.donec
		return
	}
	l.closed = true
	clear(l.targets)
	l.mu.Unlock()
	close(l.wake)
	<-l.donec
}

// tick is the loop's resolution. Beats are scheduled one interval minus a
// tick apart, so consecutive beats of a target are never more than one
// interval apart.
func (l *Loop) tick() time.Duration { return l.interval / 8 }

// retryDelay is how long after a failed beat the target is tried again.
func (l *Loop) retryDelay() time.Duration { return l.interval / 4 }

// period is the delay between successful beats.
func (l *Loop) period() time.Duration { return l.interval - l.tick() }

func (l *Loop) beatLoop() {
	defer close(l.donec)
	t := time.NewTicker(l.tick())
	defer t.Stop()
	var due []*Registration
	for {
		select {
		case <-t.C:
		case _, ok := <-l.wake:
			if !ok {
				return
			}
		}
		now := l.since()
		l.coarse.Store(now)
		due = due[:0]
		l.mu.Lock()
		for r := range l.targets {
			if now >= r.next {
				due = append(due, r)
			}
		}
		l.mu.Unlock()
		for _, r := range due {
			l.beatOne(r)
		}
		due = forget(due)
	}
}

// forget empties due, the beat loop's reusable list of targets, so that
// its array keeps no target alive: a registration points into its target
// (a held lock with its callbacks), and one left in the array would stay
// reachable long after it was stopped. An array much larger than the
// last round needed (a burst of held locks that ended) is dropped.
func forget(due []*Registration) []*Registration {
	n := len(due)
	clear(due)
	if cap(due) > 256 && n < cap(due)/4 {
		return nil
	}
	return due[:0]
}

func (l *Loop) beatOne(r *Registration) {
	err := r.target.Beat()
	now := l.since()
	l.mu.Lock()
	if _, ok := l.targets[r]; !ok {
		l.mu.Unlock()
		return
	}
	var lostErr error
	switch {
	case err == nil:
		r.failures = 0
		r.next = now + int64(l.period())
	case errors.Is(err, ErrGone):
		l.failures.Add(1)
		lostErr = err
	default:
		l.failures.Add(1)
		r.failures++
		r.next = now + int64(l.retryDelay())
		if r.failures >= MaxFailures {
			lostErr = fmt.Errorf("%w: %d consecutive failures, last: %w", ErrFailing, r.failures, err)
		}
	}
	if lostErr != nil {
		delete(l.targets, r)
	}
	l.mu.Unlock()
	if lostErr != nil {
		r.target.Lost(lostErr)
	}
}
