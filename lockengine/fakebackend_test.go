package lockengine

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// fakeBackend is an in-memory Backend for Queue tests. It grants every
// request at once unless the test has marked the name held elsewhere
// (block): then TryLock returns ErrWouldBlock and Lock waits until the test
// frees it (unblock) or its context ends. It lets the test report a hold
// lost, and checks the Queue's promise to a Backend: at most one call in
// progress and one hold outstanding per name. Breaches are recorded, not
// returned, so that a test can look at them after the fact (violations).
type fakeBackend struct {
	mu         sync.Mutex
	holds      map[string]*fakeHold     // guarded by mu; the outstanding hold per name
	tokens     map[string]uint64        // guarded by mu
	inflight   map[string]int           // guarded by mu; calls in progress per name
	locking    map[string]int           // guarded by mu; Lock calls waiting per name
	blocked    map[string]chan struct{} // guarded by mu; names held elsewhere, closed when freed
	violations []string                 // guarded by mu
	// bumpGate, when set (before any Bump), makes Bump wait until it is
	// closed; bumping counts the Bumps waiting at it.
	bumpGate chan struct{}
	bumping  atomic.Int32
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		holds:    make(map[string]*fakeHold),
		tokens:   make(map[string]uint64),
		inflight: make(map[string]int),
		locking:  make(map[string]int),
		blocked:  make(map[string]chan struct{}),
	}
}

var _ Backend = (*fakeBackend)(nil)

// enter records the start of a call for name, and a violation when another
// is in progress. It yields so that an overlapping call has a chance to
// show up.
func (b *fakeBackend) enter(name, call string) {
	b.mu.Lock()
	b.inflight[name]++
	if n := b.inflight[name]; n > 1 {
		b.violate(fmt.Sprintf("%s %q: %d calls in progress", call, name, n))
	}
	b.mu.Unlock()
	runtime.Gosched()
}

// violate records a breach, up to a few. Called with b.mu held.
func (b *fakeBackend) violate(what string) {
	if len(b.violations) < 10 {
		b.violations = append(b.violations, what)
	}
}

func (b *fakeBackend) exit(name string) {
	b.mu.Lock()
	b.inflight[name]--
	b.mu.Unlock()
}

// grantLocked makes a hold of name. Called with b.mu held.
func (b *fakeBackend) grantLocked(name string, mode Mode, lost func(error)) *fakeHold {
	if b.holds[name] != nil {
		b.violate(fmt.Sprintf("lock %q: two holds outstanding", name))
	}
	b.tokens[name]++
	h := &fakeHold{b: b, name: name, mode: mode, token: b.tokens[name], lost: lost}
	h.valid.Store(true)
	b.holds[name] = h
	return h
}

// TryLock implements Backend.
func (b *fakeBackend) TryLock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error) {
	b.enter(name, "TryLock")
	defer b.exit(name)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.blocked[name] != nil {
		return nil, fmt.Errorf("fake: lock %q: %w", name, ErrWouldBlock)
	}
	return b.grantLocked(name, mode, lost), nil
}

// Lock implements Backend.
func (b *fakeBackend) Lock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error) {
	b.enter(name, "Lock")
	defer b.exit(name)
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.blocked[name] != nil {
		freed := b.blocked[name]
		b.locking[name]++
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
		}
		b.mu.Lock()
		b.locking[name]--
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("fake: lock %q: %w", name, err)
		}
	}
	return b.grantLocked(name, mode, lost), nil
}

// Close implements Backend.
func (b *fakeBackend) Close() error { return nil }

// block marks name held by another process: TryLock would block and Lock
// waits until unblock.
func (b *fakeBackend) block(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.blocked[name] == nil {
		b.blocked[name] = make(chan struct{})
	}
}

// unblock frees a name marked by block.
func (b *fakeBackend) unblock(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.blocked[name]; c != nil {
		close(c)
		delete(b.blocked, name)
	}
}

// waitingLocks returns how many Lock calls for name are waiting for unblock.
func (b *fakeBackend) waitingLocks(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.locking[name]
}

// idle reports whether no call is in progress and no hold outstanding for
// any name.
func (b *fakeBackend) idle() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.inflight {
		if n != 0 {
			return false
		}
	}
	return len(b.holds) == 0
}

// violationList returns the breaches of the Queue's promise seen so far.
func (b *fakeBackend) violationList() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.violations...)
}

// hold returns the outstanding hold of name, or nil.
func (b *fakeBackend) hold(name string) *fakeHold {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holds[name]
}

type fakeHold struct {
	b        *fakeBackend
	name     string
	mode     Mode
	token    uint64
	lost     func(error)
	lostOnce sync.Once
	valid    atomic.Bool
	unlocked sync.Once
}

var _ Hold = (*fakeHold)(nil)

func (h *fakeHold) Token() uint64 { return h.token }
func (h *fakeHold) Valid() bool   { return h.valid.Load() }

func (h *fakeHold) Unlock() error {
	h.unlocked.Do(func() {
		h.b.enter(h.name, "Unlock")
		defer h.b.exit(h.name)
		h.valid.Store(false)
		h.b.mu.Lock()
		if h.b.holds[h.name] == h {
			delete(h.b.holds, h.name)
		}
		h.b.mu.Unlock()
	})
	return nil
}

func (h *fakeHold) Bump() (uint64, error) {
	h.b.enter(h.name, "Bump")
	defer h.b.exit(h.name)
	if g := h.b.bumpGate; g != nil {
		h.b.bumping.Add(1)
		<-g
		h.b.bumping.Add(-1)
	}
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	if h.mode != Exclusive || !h.valid.Load() {
		return 0, fmt.Errorf("fake: bump %q: %w", h.name, ErrNotHeld)
	}
	h.b.tokens[h.name]++
	return h.b.tokens[h.name], nil
}

// lose reports the hold lost, as a backend's heartbeat would.
func (h *fakeHold) lose() {
	h.lostOnce.Do(func() {
		h.valid.Store(false)
		h.lost(fmt.Errorf("fake: lock %q: %w", h.name, ErrLost))
	})
}
