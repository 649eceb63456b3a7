package dirlock

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The epoch makes tokens survive power loss without an fsync per grant.
// Records (lock files, the guard's floor) are written without fsync, so a
// crash may roll them back or truncate them. The epoch file holds a
// counter that every Open increments and makes durable (write a new file,
// fsync it, rename it over the old one, fsync the directory) before the
// backend hands out anything; every token the backend hands out is at
// least epoch<<32. So any token after a restart is above every token
// handed out before it, whatever the records say, and a renamed file is
// either the old or the new record after a crash, never a torn one.
// Within an epoch tokens go on from the records as before:
// max(record, epoch<<32)+1. See docs/design.md.
const (
	epochFile    = "epoch"
	epochTmp     = "epoch.tmp"
	epochPrefix  = "lockfs1 epoch="
	epochShift   = 32
	maxEpoch     = 1<<32 - 1
	epochGuardTO = 30 * time.Second // bound on waiting for the guard at Open
)

// ErrCorruptEpoch: the epoch file exists but holds no valid record, so the
// backend cannot tell how high tokens have gone. Open refuses to guess.
var ErrCorruptEpoch = errors.New("corrupt epoch file")

// startEpoch takes the guard exclusively (so daemons starting together on
// one directory get distinct epochs), reads the epoch, makes epoch+1
// durable and returns it.
func (b *Backend) startEpoch() (uint64, error) {
	deadline := time.Now().Add(epochGuardTO)
	for {
		err := b.guard.lockExclusive()
		if err == nil {
			break
		}
		if !errors.Is(err, errGuardBusy) || time.Now().After(deadline) {
			return 0, fmt.Errorf("epoch: %w", err)
		}
	}
	defer b.guard.unlockExclusive()
	old, err := b.readEpoch()
	if err != nil {
		return 0, err
	}
	if old >= maxEpoch {
		return 0, fmt.Errorf("epoch: %s: epoch %d is at its maximum", filepath.Join(b.dir, epochFile), old)
	}
	e := old + 1
	if err := b.writeEpoch(e); err != nil {
		return 0, err
	}
	return e, nil
}

// readEpoch returns the stored epoch. A missing epoch file (a new
// directory, or one written by a version without epochs) is recomputed
// from the highest token recorded in the directory; an empty or corrupt
// one is ErrCorruptEpoch, never taken as 0.
func (b *Backend) readEpoch() (uint64, error) {
	path := filepath.Join(b.dir, epochFile)
	fd, _, err := openStateFile(b.dirFd, b.dir, epochFile, unix.O_RDONLY, 0)
	if errors.Is(err, unix.ENOENT) {
		high := b.highestRecordedToken()
		if high > 0 {
			b.log.Warn("no epoch file; continuing above the highest token recorded in the state directory",
				"path", path, "highest_token", high)
		}
		return high >> epochShift, nil
	}
	if err != nil {
		return 0, fmt.Errorf("epoch: %w", err)
	}
	defer closeFd(fd)
	n, empty, err := readRecord(fd, epochPrefix)
	if empty {
		err = errors.New("empty file")
	}
	if err != nil {
		return 0, fmt.Errorf("%w %s (%v): lockfs cannot tell how high its tokens went; if you accept that "+
			"tokens may repeat those recorded before a crash, remove the file and lockfs continues above the "+
			"highest token recorded in the state directory", ErrCorruptEpoch, path, err)
	}
	return n, nil
}

// highestRecordedToken returns the highest token in the guard's floor and
// in the lock files (in every lock directory); unreadable records count as
// 0.
func (b *Backend) highestRecordedToken() uint64 {
	high, _ := b.guard.floor()
	locks := filepath.Join(b.dir, "locks")
	_ = b.walkLocks(func(dirfd int, dir, name string, _ *unix.Stat_t) error {
		fd, _, err := openStateFile(dirfd, filepath.Join(locks, dir), name, unix.O_RDONLY, 0)
		if err != nil {
			return nil
		}
		if n, _, err := readRecord(fd, tokenPrefix); err == nil {
			high = max(high, n)
		}
		closeFd(fd)
		return nil
	})
	return high
}

// writeEpoch makes e the durable epoch: a new file, fsynced, renamed over
// the old one, and the directory fsynced.
func (b *Backend) writeEpoch(e uint64) error {
	tmp := filepath.Join(b.dir, epochTmp)
	if err := unix.Unlinkat(b.dirFd, epochTmp, 0); err != nil && err != unix.ENOENT {
		return fmt.Errorf("epoch: remove %s: %w", tmp, err)
	}
	fd, _, err := openStateFile(b.dirFd, b.dir, epochTmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, filePerm)
	if err != nil {
		return fmt.Errorf("epoch: %w", err)
	}
	err = writeRecord(fd, epochPrefix, e)
	if err == nil {
		err = ignoringEINTR(func() error { return unix.Fsync(fd) })
	}
	closeFd(fd)
	if err == nil {
		err = unix.Renameat(b.dirFd, epochTmp, b.dirFd, epochFile)
	}
	if err == nil {
		err = ignoringEINTR(func() error { return unix.Fsync(b.dirFd) })
	}
	if err != nil {
		_ = unix.Unlinkat(b.dirFd, epochTmp, 0)
		return fmt.Errorf("epoch: write %s: %w", filepath.Join(b.dir, epochFile), err)
	}
	return nil
}
