package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// ErrUnsafeStateDir: the state directory, or something in it, is owned by
// another user than the one the backend runs as. Another user who can open
// a lock file can flock it (a read-only descriptor suffices) and hold the
// name outside lockfs, flock the guard and stop every acquisition, or read
// every name and token, so Open refuses such a directory rather than fix
// it.
var ErrUnsafeStateDir = errors.New("unsafe state directory")

// Permissions of what the backend creates: the state directory and its
// subdirectories are the daemon's alone, and so are its files.
const (
	dirPerm  = 0o700
	filePerm = 0o600
)

// stateOpenFlags are added to every open of a file in the state directory:
// a symlink is refused (ELOOP), a FIFO or device opens without waiting for
// a peer, and nothing leaks into children.
const stateOpenFlags = unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC

// openStateFile opens name in the directory open as dirfd (whose path is
// dirPath, for messages) with flags|stateOpenFlags, and returns the
// descriptor and its stat only if it is a regular file with one link.
// Anything else is refused with an error wrapping lockengine.ErrNotRegular
// that names the path and what is there, and is left untouched. A missing
// file (without O_CREAT) is an error wrapping unix.ENOENT.
func openStateFile(dirfd int, dirPath, name string, flags int, perm uint32) (int, unix.Stat_t, error) {
	path := filepath.Join(dirPath, name)
	var st unix.Stat_t
	// Refuse what is not a regular file before opening it: opening a
	// device can have side effects even with O_NONBLOCK.
	if err := fstatat(dirfd, name, &st); err == nil {
		if err := checkRegular(path, &st); err != nil {
			return -1, st, err
		}
	}
	fd, err := ignoringEINTR2(func() (int, error) { return unix.Openat(dirfd, name, flags|stateOpenFlags, perm) })
	if err != nil {
		switch err {
		case unix.ELOOP:
			return -1, st, fmt.Errorf("%s: %w: a symlink is there; remove it", path, lockengine.ErrNotRegular)
		case unix.ENXIO, unix.EOPNOTSUPP:
			return -1, st, fmt.Errorf("%s: %w: a socket or device is there; remove it", path, lockengine.ErrNotRegular)
		case unix.EISDIR:
			return -1, st, fmt.Errorf("%s: %w: a directory is there; remove it", path, lockengine.ErrNotRegular)
		}
		return -1, st, fmt.Errorf("open %s: %w", path, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		closeFd(fd)
		return -1, st, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := checkRegular(path, &st); err != nil {
		closeFd(fd)
		return -1, st, err
	}
	return fd, st, nil
}

// checkRegular returns an error wrapping lockengine.ErrNotRegular unless st
// is a regular file with one link.
func checkRegular(path string, st *unix.Stat_t) error {
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG {
		return fmt.Errorf("%s: %w: a %s is there; remove it", path, lockengine.ErrNotRegular, fileTypeName(t))
	}
	if st.Nlink != 1 {
		return fmt.Errorf("%s: %w: it has %d hard links; remove it", path, lockengine.ErrNotRegular, st.Nlink)
	}
	return nil
}

// fileTypeName names an S_IFMT file type for messages.
func fileTypeName(t uint32) string {
	switch t {
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "device"
	}
	return fmt.Sprintf("file of type %#o", t)
}

// secureDir checks the directory open as fd (path, for messages): it must
// be owned by the uid the backend runs as (else ErrUnsafeStateDir), and
// group or other permission bits are removed. Open calls it on the state
// directory before creating anything in it.
func (b *Backend) secureDir(fd int, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s: not a directory", path)
	}
	return b.ownAndTighten(fd, path, &st, dirPerm)
}

// ownAndTighten refuses st (of path, open as fd) with ErrUnsafeStateDir
// unless it is owned by the uid the backend runs as, and removes group and
// other permission bits (setting perm) when any is set, with a log line.
func (b *Backend) ownAndTighten(fd int, path string, st *unix.Stat_t, perm uint32) error {
	uid := uint32(os.Geteuid())
	if st.Uid != uid {
		return fmt.Errorf("%w: %s is owned by uid %d, but lockfs runs as uid %d, so that user could hold, "+
			"block or read its locks; fix: chown -R %d %s && chmod -R go-rwx %s, or use another state directory",
			ErrUnsafeStateDir, path, st.Uid, uid, uid, b.dir, b.dir)
	}
	if st.Mode&0o077 == 0 {
		return nil
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("%w: %s has mode %#o and cannot be tightened to %#o: %w",
			ErrUnsafeStateDir, path, st.Mode&0o7777, perm, err)
	}
	b.tightened++
	if b.tightened <= maxTightenedLogs {
		b.log.Warn("state directory permissions tightened", "path", path,
			"old_mode", fmt.Sprintf("%#o", st.Mode&0o7777), "new_mode", fmt.Sprintf("%#o", perm))
	}
	return nil
}

// maxTightenedLogs bounds the log lines of one Open about tightened
// permissions; past it one summary line gives the count.
const maxTightenedLogs = 8

// secureStateDir checks what the state directory holds, at Open, after
// secureDir checked the directory itself: locks/, tmp/, the guard, the
// takeover marker, the epoch file and every file in locks/ (lock
// directories included) and tmp/ must be owned by the uid the backend runs
// as, else the directory is refused with ErrUnsafeStateDir. Group or other
// permission bits on what it owns are removed (directories 0700, files
// 0600) and logged: earlier versions created 0755 and 0644, which let any
// local user flock a lock file. Lock directories are not checked: their
// owner, group and mode are the users' data (lockengine.Tree), and locks/
// (0700) keeps other users out of them.
func (b *Backend) secureStateDir() error {
	for _, d := range []struct {
		fd   int
		path string
	}{{b.locksFd, filepath.Join(b.dir, "locks")}, {b.tmpFd, filepath.Join(b.dir, "tmp")}} {
		if err := b.secureDir(d.fd, d.path); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(b.guard.fd, &st); err != nil {
		return fmt.Errorf("stat guard: %w", err)
	}
	if err := b.ownAndTighten(b.guard.fd, filepath.Join(b.dir, "guard"), &st, filePerm); err != nil {
		return err
	}
	for _, name := range []string{takeoverMarker, epochFile} {
		fd, st, err := openStateFile(b.dirFd, b.dir, name, unix.O_RDONLY, 0)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return err
		}
		err = b.ownAndTighten(fd, filepath.Join(b.dir, name), &st, filePerm)
		closeFd(fd)
		if err != nil {
			return err
		}
	}
	if err := b.secureLockFiles(); err != nil {
		return err
	}
	if err := b.secureFiles(b.tmpFd, filepath.Join(b.dir, "tmp")); err != nil {
		return err
	}
	if b.tightened > maxTightenedLogs {
		b.log.Warn("state directory permissions tightened", "path", b.dir, "count", b.tightened)
	}
	return nil
}

// secureFiles applies secureEntry to every entry of the directory open as
// dirfd (tmp/), except the directories Mkdir prepares there: like lock
// directories, their owner and mode are the users'.
func (b *Backend) secureFiles(dirfd int, dirPath string) error {
	names, err := readDirNames(dirfd)
	if err != nil {
		return fmt.Errorf("read %s: %w", dirPath, err)
	}
	for _, name := range names {
		var st unix.Stat_t
		if err := fstatat(dirfd, name, &st); err != nil {
			continue // removed meanwhile (by another daemon's sweeper)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && strings.HasPrefix(name, mkdirTmpPrefix) {
			continue
		}
		if err := b.secureEntry(dirfd, dirPath, name, &st); err != nil {
			return err
		}
	}
	return nil
}

// secureLockFiles applies secureEntry to everything below locks/ but the
// lock directories, whose owner, group and mode are the users' (and
// unreachable by other users, since locks/ is 0700).
func (b *Backend) secureLockFiles() error {
	locks := filepath.Join(b.dir, "locks")
	return b.walkLocks(func(dirfd int, dir, name string, st *unix.Stat_t) error {
		return b.secureEntry(dirfd, filepath.Join(locks, dir), name, st)
	})
}

// secureEntry applies ownAndTighten to name (stat st) in the directory open
// as dirfd (dirPath, for messages). Entries other than regular files with
// one link are only checked for their owner: opening a lock path refuses
// them, one name at a time.
func (b *Backend) secureEntry(dirfd int, dirPath, name string, st *unix.Stat_t) error {
	path := filepath.Join(dirPath, name)
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 || st.Mode&0o077 == 0 {
		return b.ownAndTighten(-1, path, &unix.Stat_t{Uid: st.Uid}, filePerm)
	}
	fd, fst, err := openStateFile(dirfd, dirPath, name, unix.O_RDONLY, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	err = b.ownAndTighten(fd, path, &fst, filePerm)
	closeFd(fd)
	return err
}
