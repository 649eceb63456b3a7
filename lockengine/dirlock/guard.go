package dirlock

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// guard is the never-unlinked guard file. Every change of which inode a lock
// path names (removal of an unused file, replacement by a takeover) happens
// under the guard held exclusively, and every acquirer verifies its freshly
// locked inode under the guard held shared, so no acquirer can verify a file
// that is being removed or replaced. The guard also stores the token floor:
// the highest token of any removed lock file.
//
// flock(2) locks belong to the open file description, so the goroutines of
// one process share one shared flock, counted in readers.
type guard struct {
	fd   int
	wait time.Duration // bounded wait for the flock; a stopped holder hurts liveness only

	rw      sync.RWMutex // readers hold R, exclusive users hold W
	mu      sync.Mutex
	readers int // guarded by mu; holders of the shared flock in this process
}

// errGuardBusy: the guard was not available within the bounded wait.
var errGuardBusy = fmt.Errorf("guard busy: %w", lockengine.ErrWouldBlock)

func (g *guard) lockShared(wait bool) error {
	g.rw.RLock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readers == 0 {
		if err := g.flockBounded(unix.LOCK_SH, wait); err != nil {
			g.rw.RUnlock()
			return err
		}
	}
	g.readers++
	return nil
}

func (g *guard) unlockShared() {
	g.mu.Lock()
	g.readers--
	if g.readers == 0 {
		_ = flock(g.fd, unix.LOCK_UN)
	}
	g.mu.Unlock()
	g.rw.RUnlock()
}

func (g *guard) lockExclusive() error {
	g.rw.Lock()
	if err := g.flockBounded(unix.LOCK_EX, true); err != nil {
		g.rw.Unlock()
		return err
	}
	return nil
}

func (g *guard) unlockExclusive() {
	_ = flock(g.fd, unix.LOCK_UN)
	g.rw.Unlock()
}

func (g *guard) flockBounded(how int, wait bool) error {
	err := flock(g.fd, how|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if err != unix.EWOULDBLOCK {
		return fmt.Errorf("guard: flock: %w", err)
	}
	if !wait {
		return errGuardBusy
	}
	deadline := time.Now().Add(g.wait)
	for d := 50 * time.Microsecond; time.Now().Before(deadline); d = min(2*d, 5*time.Millisecond) {
		time.Sleep(d)
		switch err := flock(g.fd, how|unix.LOCK_NB); err {
		case nil:
			return nil
		case unix.EWOULDBLOCK:
		default:
			return fmt.Errorf("guard: flock: %w", err)
		}
	}
	return errGuardBusy
}

// floor returns the token floor. Call with the guard held.
func (g *guard) floor() (uint64, error) {
	n, _, err := readRecord(g.fd, floorPrefix)
	if err != nil {
		return 0, fmt.Errorf("guard: %w", err)
	}
	return n, nil
}

// raiseFloor makes the floor at least n. Call with the guard held
// exclusively.
func (g *guard) raiseFloor(n uint64) error {
	cur, err := g.floor()
	if err != nil || cur >= n {
		return err
	}
	if err := writeRecord(g.fd, floorPrefix, n); err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	return nil
}

// unarmedRecently reports whether the takeover marker was seen absent at
// most half a heartbeat ago (or is absent now). An unguarded attempt calls
// it after its record write: see takeoverMarker.
func (b *Backend) unarmedRecently() bool {
	if b.sinceStart()-b.checkedAt.Load() <= int64(b.opts.Heartbeat)/2 && !b.armed.Load() {
		return true
	}
	b.refreshArmed()
	return !b.armed.Load()
}

// readFloor reads the token floor. A sweeper may be rewriting it (under
// the guard held exclusively); an attempt that does not hold the guard
// reads until two consecutive reads agree, so a read torn by a concurrent
// write is never used, and a stopped sweeper cannot block new names.
func (b *Backend) readFloor(guarded bool) (uint64, error) {
	prev, err := b.guard.floor()
	if guarded || err != nil {
		return prev, err
	}
	for range 100 {
		cur, err := b.guard.floor()
		if err != nil || cur == prev {
			return cur, err
		}
		prev = cur
	}
	return 0, fmt.Errorf("guard: token floor keeps changing: %w", lockengine.ErrWouldBlock)
}

// takeoverMarker is the file whose existence says that some backend on the
// directory may take over locks (TakeoverAfter > 0). It is never removed by
// lockfs.
//
// The guard only protects acquirers against takeovers: removal of unused
// files is done by a process holding the file's flock exclusively, which no
// acquirer can hold at the same time. So while no backend on the directory
// has takeover enabled, acquirers skip the guard. This is safe because a
// takeover backend creates the marker before it starts watching any file,
// and takes over only after watching an unchanged file for TakeoverAfter
// (at least 3 heartbeats). An unguarded acquirer, right after writing its
// record, confirms that the marker was absent at most half a heartbeat
// earlier (or is absent now), else it gives the grant up and retries under
// the guard. So its write either lands inside any takeover's watch window,
// which it resets, or precedes the window, in which case its verification
// also preceded the takeover's replacement of the file.
const takeoverMarker = "takeover"

// refreshArmed looks for the takeover marker.
func (b *Backend) refreshArmed() {
	now := b.sinceStart()
	var st unix.Stat_t
	if err := fstatat(b.dirFd, takeoverMarker, &st); err != unix.ENOENT {
		b.armed.Store(true) // present, or unknown: take the safe path
	}
	b.checkedAt.Store(now)
}

func (b *Backend) sinceStart() int64 { return int64(time.Since(b.started)) }
