package dirlock

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mapshrink"
	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock/internal/heartbeat"
)

// hold is a Backend grant: a descriptor holding flock(2) on the lock
// file, refreshed and verified by the heartbeat loop.
//
// Its fields are ordered to pack it into 128 bytes: one is kept per held
// name (see docs/benchmarks.md, Memory).
type hold struct {
	b     *Backend
	name  string
	token atomic.Uint64
	reg   heartbeat.Registration
	lost  func(error) // the lockengine.Queue's callback

	lastBeat atomic.Int64 // unix ns of the last successful refresh

	lf     lockFile // guarded by mu
	mu     sync.Mutex
	mode   lockengine.Mode
	closed bool // guarded by mu
	gone   bool // guarded by mu; the heartbeat reported the lock lost
}

var (
	_ lockengine.Hold              = (*hold)(nil)
	_ lockengine.HeartbeatReporter = (*hold)(nil)
	_ heartbeat.Target             = (*hold)(nil)
)

func (b *Backend) newHold(name string, lf lockFile, mode lockengine.Mode, tok uint64, lost func(error)) *hold {
	h := &hold{b: b, name: name, mode: mode, lf: lf, lost: lost}
	h.token.Store(tok)
	b.mu.Lock()
	b.holds[name] = h
	b.mu.Unlock()
	b.hb.Register(&h.reg, h)
	return h
}

// Lost implements heartbeat.Target.
func (h *hold) Lost(err error) {
	h.mu.Lock()
	h.gone = true
	h.mu.Unlock()
	h.b.log.Warn("lock lost", "lock", h.name, "mode", h.mode, "token", h.token.Load(), "err", err)
	if h.lost != nil {
		h.lost(fmt.Errorf("lock %q: %w: %w", h.name, lockengine.ErrLost, err))
	}
}

// Valid implements Hold. A flock cannot expire while its descriptor is
// open, so a dir hold is valid until the heartbeat reports it lost.
func (h *hold) Valid() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.gone
}

// Bump implements lockengine.Hold: read the record and write token+1 under the
// exclusive flock this hold has.
func (h *hold) Bump() (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.gone || h.mode != lockengine.Exclusive {
		return 0, fmt.Errorf("lock %q: bump: %w", h.name, lockengine.ErrNotHeld)
	}
	tok, _, err := readRecord(h.lf.fd, tokenPrefix)
	if err == nil {
		tok, err = nextToken(max(tok, h.token.Load(), h.b.base))
	}
	if err == nil {
		err = writeRecord(h.lf.fd, tokenPrefix, tok)
	}
	if err != nil {
		return 0, fmt.Errorf("lock %q: bump: %w", h.name, err)
	}
	h.token.Store(tok)
	return tok, nil
}

// Token implements Hold.
func (h *hold) Token() uint64 { return h.token.Load() }

// Beat implements heartbeat.Target: refresh the file's times and verify that
// the lock path still names the locked inode.
func (h *hold) Beat() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	var st unix.Stat_t
	switch err := h.b.statName(h.name, &st); {
	case err == unix.ENOENT:
		return fmt.Errorf("%w: lock file was removed", heartbeat.ErrGone)
	case err != nil:
		return fmt.Errorf("verify: %w", err)
	case st.Dev != h.lf.dev || st.Ino != h.lf.ino:
		return fmt.Errorf("%w: lock file was replaced (taken over or removed by hand)", heartbeat.ErrGone)
	}
	if err := touch(h.lf.fd); err != nil {
		return err
	}
	h.lastBeat.Store(time.Now().UnixNano())
	return nil
}

// LastHeartbeat implements lockengine.HeartbeatReporter: the last refresh, or the
// zero time before the first one (the grant's own write).
func (h *hold) LastHeartbeat() time.Time {
	if ns := h.lastBeat.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Unlock implements Hold. The descriptor goes back to the idle cache unless
// the lock was lost.
func (h *hold) Unlock() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	lf, gone := h.lf, h.gone
	h.lf = lockFile{fd: -1}
	h.mu.Unlock()

	h.reg.Stop()
	err := flock(lf.fd, unix.LOCK_UN)
	if err == nil {
		h.b.announceRelease(h.name, lf)
	}
	keep := err == nil && !gone
	b := h.b
	b.mu.Lock()
	if b.holds[h.name] == h {
		delete(b.holds, h.name)
		b.holds = mapshrink.Shrink(b.holds, &b.holdsPeak)
	}
	if keep {
		keep = b.keepIdleLocked(h.name, lf)
	}
	b.mu.Unlock()
	if !keep {
		closeFd(lf.fd) // closing drops the flock in any case
	}
	if err != nil {
		return fmt.Errorf("lock %q: unlock: %w", h.name, err)
	}
	return nil
}
