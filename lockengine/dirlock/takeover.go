package dirlock

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// staleWatch tracks how long the file at a lock path has gone without a
// refresh, on this process's monotonic clock, so that wall-clock jumps and
// suspends of the holder's machine cannot make a holder look stale.
type staleWatch struct {
	valid       bool
	dev, ino    uint64
	mtim, ctim  unix.Timespec
	since, last time.Time
}

// watchStale observes the lock file and, once it has been unchanged for
// TakeoverAfter while its flock stays held, takes the name over. It returns
// a hold when it took over.
func (b *Backend) watchStale(w *staleWatch, name string, lf lockFile, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	now := time.Now()
	if w.valid && now.Sub(w.last) < b.opts.TakeoverAfter/16 {
		return nil, nil
	}
	w.last = now
	var st unix.Stat_t
	if err := b.statName(name, &st); err != nil {
		w.valid = false
		return nil, nil // vanished: the next attempt reopens
	}
	if !w.valid || st.Dev != w.dev || st.Ino != w.ino || st.Mtim != w.mtim || st.Ctim != w.ctim {
		*w = staleWatch{valid: true, dev: st.Dev, ino: st.Ino, mtim: st.Mtim, ctim: st.Ctim, since: now, last: now}
		return nil, nil
	}
	if now.Sub(w.since) < b.opts.TakeoverAfter {
		return nil, nil
	}
	h, err := b.takeover(name, lf, mode, w, lost)
	if err != nil {
		w.valid = false
		if errors.Is(err, lockengine.ErrWouldBlock) {
			return nil, nil
		}
		return nil, err
	}
	return h, nil
}

// takeover replaces the lock file of a stuck holder with a new inode that
// this process holds, under the guard held exclusively, with a token above
// the old one. The old holder's heartbeat sees the replacement and reports
// the lock lost. lf is closed on success.
func (b *Backend) takeover(name string, lf lockFile, mode lockengine.Mode, w *staleWatch, lost func(error)) (lockengine.Hold, error) {
	if err := b.guard.lockExclusive(); err != nil {
		return nil, err
	}
	defer b.guard.unlockExclusive()
	var st unix.Stat_t
	if err := b.statName(name, &st); err != nil ||
		st.Dev != w.dev || st.Ino != w.ino || st.Mtim != w.mtim || st.Ctim != w.ctim ||
		st.Dev != lf.dev || st.Ino != lf.ino {
		return nil, fmt.Errorf("lock %q: changed before takeover: %w", name, lockengine.ErrWouldBlock)
	}
	// Still held? If the flock is free this is an ordinary acquisition.
	if err := flock(lf.fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		_ = flock(lf.fd, unix.LOCK_UN)
		return nil, fmt.Errorf("lock %q: holder left: %w", name, lockengine.ErrWouldBlock)
	}
	old, _, err := readRecord(lf.fd, tokenPrefix)
	if err != nil {
		return nil, fmt.Errorf("lock %q: takeover: %w", name, err)
	}
	floor, err := b.guard.floor()
	if err != nil {
		return nil, fmt.Errorf("lock %q: takeover: %w", name, err)
	}
	tok, err := nextToken(max(old, floor, b.base))
	if err != nil {
		return nil, fmt.Errorf("lock %q: takeover: %w", name, err)
	}
	dir, base := lockengine.SplitName(name)
	pfd := b.locksFd
	if dir != "" {
		if pfd, err = b.openDir(dir, unix.O_PATH); err != nil {
			return nil, fmt.Errorf("lock %q: takeover: %w", name, err)
		}
		defer closeFd(pfd)
	}
	tmpName := "takeover-" + strconv.FormatUint(rand.Uint64(), 36)
	fd, err := unix.Openat(b.tmpFd, tmpName, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|stateOpenFlags, filePerm)
	if err != nil {
		return nil, fmt.Errorf("lock %q: takeover: create: %w", name, err)
	}
	var nst unix.Stat_t
	err = unix.Fstat(fd, &nst)
	if err == nil {
		err = writeRecord(fd, tokenPrefix, tok)
	}
	if err == nil {
		err = flock(fd, flockHow(mode)|unix.LOCK_NB)
	}
	if err == nil {
		err = unix.Renameat(b.tmpFd, tmpName, pfd, base)
	}
	if err != nil {
		_ = unix.Unlinkat(b.tmpFd, tmpName, 0)
		closeFd(fd)
		return nil, fmt.Errorf("lock %q: takeover: %w", name, err)
	}
	closeFd(lf.fd)
	b.log.Warn("took over lock from a holder that stopped refreshing it",
		"lock", name, "mode", mode, "token", tok, "old_token", old,
		"unrefreshed_for", time.Since(w.since).Round(time.Millisecond))
	return b.newHold(name, lockFile{fd: fd, dev: nst.Dev, ino: nst.Ino}, mode, tok, lost), nil
}
