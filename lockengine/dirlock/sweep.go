package dirlock

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

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
