package dirlock

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock/internal/heartbeat"
)

// hold is a Backend grant: a descriptor holding flock(2) on the lock
// file, refreshed and verified by the heartbeat loop.
type hold struct {
	b     *Backend
	name  string
	mode  lockengine.Mode
	token atomic.Uint64
	reg   heartbeat.Registration
	lost  func(error) // the lockengine.Queue's callback

	lastBeat atomic.Int64 // unix ns of the last successful refresh

	mu     sync.Mutex
	lf     lockFile // guarded by mu
	closed bool     // guarded by mu
	gone   bool     // guarded by mu; the heartbeat reported the lock lost
}

var _ heartbeat.Target = (*hold)(nil)

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

// Bump implements Bumper: read the record and write token+1 under the
// exclusive flock this hold has.
func (h *hold) Bump() (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.gone || h.mode != lockengine.Exclusive {
		return 0, fmt.Errorf("lock %q: bump: %w", h.name, lockengine.ErrNotHeld)
	}
	tok, _, err := readRecord(h.lf.fd, tokenPrefix)
	if err == nil {
		tok = max(tok, h.token.Load()) + 1
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
	switch err := fstatat(h.b.locksFd, h.name, &st); {
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

// LastHeartbeat implements HeartbeatReporter: the last refresh, or the
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
	keep := err == nil && !gone
	b := h.b
	b.mu.Lock()
	if b.holds[h.name] == h {
		delete(b.holds, h.name)
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

// sweepLoop removes unused lock files every SweepInterval, so names that are
// no longer used do not pile up.
func (b *Backend) sweepLoop() {
	defer close(b.sweepDone)
	t := time.NewTicker(b.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stopSweep:
			return
		case <-t.C:
			b.Sweep()
		}
	}
}

// Sweep removes lock files that nobody holds and that have not been used for
// IdleTTL, and leftovers of interrupted takeovers. A file is removed only
// by a process that holds its flock exclusively, under the guard held
// exclusively, after verifying that the path still names that inode, and
// its token is first saved in the guard's floor, so later grants of the
// name still get larger tokens. It returns how many files it removed.
func (b *Backend) Sweep() int {
	names, err := readDirNames(b.locksFd)
	if err != nil {
		b.log.Warn("sweep: read backing directory", "dir", b.dir, "err", err)
		return 0
	}
	cutoff := time.Now().Add(-b.opts.IdleTTL)
	removed := 0
	for _, name := range names {
		var st unix.Stat_t
		if fstatat(b.locksFd, name, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if time.Unix(st.Mtim.Unix()).After(cutoff) {
			continue
		}
		if b.removeIfUnused(name) {
			removed++
		}
	}
	if tmps, err := readDirNames(b.tmpFd); err == nil {
		for _, name := range tmps {
			var st unix.Stat_t
			if fstatat(b.tmpFd, name, &st) == nil && time.Unix(st.Mtim.Unix()).Before(cutoff) {
				_ = unix.Unlinkat(b.tmpFd, name, 0)
			}
		}
	}
	return removed
}

func (b *Backend) removeIfUnused(name string) bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	if b.holds[name] != nil {
		b.mu.Unlock()
		return false
	}
	lf, cached := b.idle[name]
	delete(b.idle, name)
	b.mu.Unlock()
	if cached {
		var st unix.Stat_t
		if fstatat(b.locksFd, name, &st) != nil || st.Dev != lf.dev || st.Ino != lf.ino {
			closeFd(lf.fd) // stale: the file was removed or replaced
			cached = false
		}
	}
	if !cached {
		fd, err := unix.Openat(b.locksFd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
			closeFd(fd)
			return false
		}
		lf = lockFile{fd: fd, dev: st.Dev, ino: st.Ino}
	}
	defer closeFd(lf.fd) // also drops the flock
	if flock(lf.fd, unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false
	}
	if b.guard.lockExclusive() != nil {
		return false
	}
	defer b.guard.unlockExclusive()
	var st unix.Stat_t
	if fstatat(b.locksFd, name, &st) != nil || st.Dev != lf.dev || st.Ino != lf.ino {
		return false
	}
	tok, _, err := readRecord(lf.fd, tokenPrefix)
	if err != nil {
		b.log.Warn("sweep: keeping lock file with unreadable record", "lock", name, "err", err)
		return false
	}
	if err := b.guard.raiseFloor(tok); err != nil {
		b.log.Warn("sweep: cannot save token floor", "lock", name, "err", err)
		return false
	}
	if err := unix.Unlinkat(b.locksFd, name, 0); err != nil {
		b.log.Warn("sweep: remove lock file", "lock", name, "err", err)
		return false
	}
	return true
}

// readDirNames lists the entries of the directory open as dirfd.
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}
