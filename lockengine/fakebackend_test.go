package lockengine

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fakeBackend is an in-memory Backend for Queue tests. It grants every
// request at once unless the test has marked the name held elsewhere
// (block): then TryLock returns ErrWouldBlock and Lock waits until the test
// frees it (unblock) or its context ends. It lets the test report a hold
// lost, and checks the Queue's promise to a Backend: at most one call in
// progress and one hold outstanding per name. Breaches are recorded, not
// returned, so that a test can look at them after the fact (violations).
// Its lock directories are in memory (dirs); like a backend that cannot
// see other processes' waiters, Mkdir and Rmdir check only holds and names
// marked held elsewhere, not Lock calls waiting, so the Queue's own checks
// of its waiters are what tests see.
type fakeBackend struct {
	mu         sync.Mutex
	dirs       map[string]DirAttr       // guarded by mu; the lock directories
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
	// bumpLoses, when set, makes the next Bumps find their hold gone
	// (as etcd's does when the key was deleted): the hold turns invalid
	// only then, so until the Bump the leases look held.
	bumpLoses atomic.Bool
	// unlockGate, when set (before any Unlock), makes Unlock wait until
	// it is closed; unlocking counts the Unlocks waiting at it.
	unlockGate chan struct{}
	unlocking  atomic.Int32
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		dirs:     make(map[string]DirAttr),
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
	if err := b.checkNameLocked(name); err != nil {
		return nil, err
	}
	if b.blocked[name] != nil {
		return nil, fmt.Errorf("fake: lock %q: %w", name, ErrWouldBlock)
	}
	return b.grantLocked(name, mode, lost), nil
}

// checkNameLocked fails a lock of name whose parent directory is missing
// (ErrNoDir) or that is a directory (ErrIsDir). Called with b.mu held.
func (b *fakeBackend) checkNameLocked(name string) error {
	if dir, _ := SplitName(name); dir != "" {
		if _, ok := b.dirs[dir]; !ok {
			return fmt.Errorf("fake: lock %q: %w", name, ErrNoDir)
		}
	}
	if _, ok := b.dirs[name]; ok {
		return fmt.Errorf("fake: lock %q: %w", name, ErrIsDir)
	}
	return nil
}

// Lock implements Backend.
func (b *fakeBackend) Lock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error) {
	b.enter(name, "Lock")
	defer b.exit(name)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkNameLocked(name); err != nil {
		return nil, err
	}
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

// StatDir implements Tree.
func (b *fakeBackend) StatDir(ctx context.Context, path string) (DirAttr, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.dirs[path]
	if !ok {
		return DirAttr{}, fmt.Errorf("fake: stat %q: %w", path, ErrNoDir)
	}
	return a, nil
}

// Mkdir implements Tree.
func (b *fakeBackend) Mkdir(ctx context.Context, path string, attr DirAttr) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dir, _ := SplitName(path); dir != "" {
		if _, ok := b.dirs[dir]; !ok {
			return fmt.Errorf("fake: mkdir %q: %w", path, ErrNoDir)
		}
	}
	if _, ok := b.dirs[path]; ok || b.holds[path] != nil || b.blocked[path] != nil {
		return fmt.Errorf("fake: mkdir %q: %w", path, ErrExist)
	}
	attr.Mode &= 0o7777
	attr.Mtime = time.Now()
	b.dirs[path] = attr
	return nil
}

// Rmdir implements Tree.
func (b *fakeBackend) Rmdir(ctx context.Context, path string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.dirs[path]; !ok {
		return fmt.Errorf("fake: rmdir %q: %w", path, ErrNoDir)
	}
	below := func(n string) bool { return strings.HasPrefix(n, path+"/") }
	for n := range b.dirs {
		if below(n) {
			return fmt.Errorf("fake: rmdir %q: %w: directory %q", path, ErrNotEmpty, n)
		}
	}
	for n := range b.holds {
		if below(n) {
			return fmt.Errorf("fake: rmdir %q: %w: %q held", path, ErrNotEmpty, n)
		}
	}
	for n := range b.blocked {
		if below(n) {
			return fmt.Errorf("fake: rmdir %q: %w: %q held elsewhere", path, ErrNotEmpty, n)
		}
	}
	delete(b.dirs, path)
	return nil
}

// SetDirAttr implements Tree.
func (b *fakeBackend) SetDirAttr(ctx context.Context, path string, attr DirAttr) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.dirs[path]; !ok {
		return fmt.Errorf("fake: chmod %q: %w", path, ErrNoDir)
	}
	attr.Mode &= 0o7777
	attr.Mtime = time.Now()
	b.dirs[path] = attr
	return nil
}

// ReadDir implements Tree.
func (b *fakeBackend) ReadDir(ctx context.Context, path string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.dirs[path]; !ok && path != "" {
		return nil, fmt.Errorf("fake: readdir %q: %w", path, ErrNoDir)
	}
	var names []string
	for n := range b.dirs {
		if dir, base := SplitName(n); dir == path {
			names = append(names, base)
		}
	}
	slices.Sort(names)
	return names, nil
}

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
		if g := h.b.unlockGate; g != nil {
			h.b.unlocking.Add(1)
			<-g
			h.b.unlocking.Add(-1)
		}
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
	if h.b.bumpLoses.Load() {
		h.valid.Store(false)
	}
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
