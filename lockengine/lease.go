package lockengine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Lease is one granted lock. It stays valid until Release is called, the
// lock is lost, or the engine is closed; Done and Err report which.
//
// Its fields are ordered to pack it into 128 bytes: one is kept per held
// lock (see docs/benchmarks.md, Memory).
type Lease struct {
	q       *Queue
	e       *entry
	g       *group
	token   uint64
	granted stamp

	// guarded by e.mu: membership of g.leases
	prev, next *Lease

	// ended, err and done change together under doneMu, once: end sets
	// err, then ended, then closes or installs done. ended is atomic so
	// that Err can read it without the mutex; err is read only after
	// ended is seen true.
	err    error
	done   chan struct{} // guarded by doneMu; made on first Done call or by end
	doneMu sync.Mutex
	ended  atomic.Bool // see doneMu

	once   sync.Once
	owner  Owner // set at grant, immutable
	mode   Mode  // set at grant, immutable
	listed bool  // guarded by e.mu
}

// closedChan is the Done channel of leases that ended before anyone asked.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Name returns the lock's name.
func (l *Lease) Name() string { return l.e.name }

// Mode returns the mode the lease was granted in.
func (l *Lease) Mode() Mode { return l.mode }

// Token returns the fencing token of the grant: for an exclusive lease a
// number strictly greater than that of every earlier grant of the name; for
// a shared lease the current generation.
func (l *Lease) Token() uint64 { return l.token }

// Owner returns who the lease was granted to (see WithOwner).
func (l *Lease) Owner() Owner { return l.owner }

// Granted returns when the lease was granted.
func (l *Lease) Granted() time.Time { return l.granted.Time() }

// Done returns a channel that is closed when the lease ends: released, lost
// or engine closed. A holder that must stop acting on the lock's protection
// as soon as it is lost selects on it.
func (l *Lease) Done() <-chan struct{} {
	l.doneMu.Lock()
	defer l.doneMu.Unlock()
	if l.done == nil {
		// Not ended: end installs done before it releases doneMu.
		l.done = make(chan struct{})
	}
	return l.done
}

// Err returns nil while the lease is held. Once Done is closed it returns
// an error wrapping ErrReleased, ErrLost (with the cause) or ErrClosed. It
// also returns an error wrapping ErrLost when the backend can no longer
// prove the grant is held, which may be shortly before Done closes.
func (l *Lease) Err() error {
	if l.ended.Load() {
		return l.err
	}
	if !l.g.hold.Valid() {
		return fmt.Errorf("lock %q: %w: the backend can no longer prove it is held", l.e.name, ErrLost)
	}
	return nil
}

// Lost reports whether the lease ended (or is ending) because the lock was
// lost or the engine closed, as opposed to being released by its holder.
func (l *Lease) Lost() bool {
	err := l.Err()
	return err != nil && !errors.Is(err, ErrReleased)
}

// Release gives the lock back. It is idempotent and safe for concurrent
// use; only the first call has an effect. It returns the backend's error
// from unlocking, if any; the lease is over either way.
func (l *Lease) Release() error {
	var err error
	l.once.Do(func() { err = l.q.release(l) })
	return err
}

// end closes the lease with err. Callers hold l.e.mu; it is a no-op when
// the lease has already ended.
//
// The whole transition happens under doneMu: were ended set before the
// mutex is taken, a concurrent Done could see it, install the shared
// closedChan, and end would then close closedChan a second time.
func (l *Lease) end(err error) {
	l.doneMu.Lock()
	defer l.doneMu.Unlock()
	if l.ended.Load() {
		return
	}
	l.err = err
	l.ended.Store(true)
	if l.done != nil {
		close(l.done)
	} else {
		l.done = closedChan
	}
}
