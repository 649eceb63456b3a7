package dirlock

import (
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
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
// IdleTTL, in locks/ and in every lock directory below it, and leftovers
// of interrupted takeovers and Mkdirs. A file is removed only by a process
// that holds its flock exclusively, under the guard held exclusively,
// after verifying that the path still names that inode, and its token is
// first saved in the guard's floor, so later grants of the name still get
// larger tokens. Lock directories are never removed: they are the users'
// (Rmdir). It returns how many lock files it removed.
func (b *Backend) Sweep() int {
	cutoff := time.Now().Add(-b.opts.IdleTTL)
	removed := 0
	err := b.walkLocks(func(_ int, dir, name string, st *unix.Stat_t) error {
		if st.Mode&unix.S_IFMT != unix.S_IFREG || time.Unix(st.Mtim.Unix()).After(cutoff) {
			return nil
		}
		if lockengine.ValidateComponent(name) == nil && b.removeIfUnused(lockengine.JoinName(dir, name)) {
			removed++
		}
		return nil
	})
	if err != nil {
		b.log.Warn("sweep: read backing directory", "dir", b.dir, "err", err)
	}
	if tmps, err := readDirNames(b.tmpFd); err == nil {
		for _, name := range tmps {
			var st unix.Stat_t
			if fstatat(b.tmpFd, name, &st) != nil || !time.Unix(st.Mtim.Unix()).Before(cutoff) {
				continue
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if strings.HasPrefix(name, mkdirTmpPrefix) {
					_ = unix.Unlinkat(b.tmpFd, name, unix.AT_REMOVEDIR)
				}
				continue
			}
			_ = unix.Unlinkat(b.tmpFd, name, 0)
		}
	}
	return removed
}

// removeIfUnused removes the lock file of name if nobody holds it (see
// Sweep for how), and reports whether it did. The sweeper, Mkdir (an old
// lock file where a directory is to be) and Rmdir (the lock files in the
// directory) use it.
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
	// Everything below is relative to the file's directory, opened
	// without following symlinks.
	dir, base := lockengine.SplitName(name)
	dfd := b.locksFd
	if dir != "" {
		var err error
		if dfd, err = b.openDir(dir, unix.O_PATH); err != nil {
			if cached {
				closeFd(lf.fd)
			}
			return false
		}
		defer closeFd(dfd)
	}
	if cached {
		var st unix.Stat_t
		if fstatat(dfd, base, &st) != nil || st.Dev != lf.dev || st.Ino != lf.ino {
			closeFd(lf.fd) // stale: the file was removed or replaced
			cached = false
		}
	}
	if !cached {
		fd, err := unix.Openat(dfd, base, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
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
	if fstatat(dfd, base, &st) != nil || st.Dev != lf.dev || st.Ino != lf.ino {
		return false
	}
	tok, _, err := readRecord(lf.fd, tokenPrefix)
	if err != nil {
		b.log.Warn("keeping lock file with unreadable record", "lock", name, "err", err)
		return false
	}
	if err := b.guard.raiseFloor(tok); err != nil {
		b.log.Warn("cannot save token floor; keeping lock file", "lock", name, "err", err)
		return false
	}
	if err := unix.Unlinkat(dfd, base, 0); err != nil {
		b.log.Warn("remove lock file", "lock", name, "err", err)
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
