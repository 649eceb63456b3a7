package lockengine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// fakeBackend is an in-memory Backend for Queue tests. It grants every
// request at once unless the test has marked the name busy elsewhere, and
// lets the test report a hold lost.
type fakeBackend struct {
	mu     sync.Mutex
	holds  map[string]*fakeHold // guarded by mu; the outstanding hold per name
	tokens map[string]uint64    // guarded by mu
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{holds: make(map[string]*fakeHold), tokens: make(map[string]uint64)}
}

var _ Backend = (*fakeBackend)(nil)

// TryLock implements Backend.
func (b *fakeBackend) TryLock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h := b.holds[name]; h != nil {
		return nil, fmt.Errorf("fake: lock %q: two holds outstanding: %w", name, ErrInvalidMode)
	}
	b.tokens[name]++
	h := &fakeHold{b: b, name: name, token: b.tokens[name], lost: lost}
	h.valid.Store(true)
	b.holds[name] = h
	return h, nil
}

// Lock implements Backend.
func (b *fakeBackend) Lock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error) {
	return b.TryLock(ctx, name, mode, lost)
}

// Close implements Backend.
func (b *fakeBackend) Close() error { return nil }

// hold returns the outstanding hold of name, or nil.
func (b *fakeBackend) hold(name string) *fakeHold {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holds[name]
}

type fakeHold struct {
	b        *fakeBackend
	name     string
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
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
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
