package dirlock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock directories are real directories below locks/: the lock file of
// name "team/app/deploy" is locks/team/app/deploy, and lock directory
// "team/app" is the directory locks/team/app, whose owner, group and mode
// are the lock directory's attributes (lockengine.DirAttr; Mtime is the
// directory's ctime). Top-level names keep their files at locks/NAME, so
// state directories of earlier versions work unchanged. The state
// directory and locks/ stay 0700, so nothing below them is reachable by
// other users whatever the lock directories' modes say; those modes are
// user data, never tightened.
//
// Every open, creation, rename and removal below locks/ refuses a symlink
// in any component of the path (openat2 with RESOLVE_NO_SYMLINKS, or,
// where openat2 is not available, one component at a time with
// O_NOFOLLOW|O_DIRECTORY), so a lock directory is always a real
// directory. Verifications (the lock path still names the locked inode)
// compare the inode at the path.

// resolveBelow is how openat2 resolves a nested path below locks/: no
// symlink in any component, nothing outside locks/.
const resolveBelow = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH

// probeOpenat2 reports whether openat2 works here (Linux 5.6 and later,
// and not refused by a seccomp filter, as older container runtimes do).
func probeOpenat2(dirfd int) bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveBelow}
	fd, err := unix.Openat2(dirfd, ".", &how)
	if err != nil {
		return false
	}
	closeFd(fd)
	return true
}

// openBelow opens path (a valid lock name) relative to locks/ with flags
// and perm, refusing a symlink in every component but the last (flags
// decide about the last one: O_NOFOLLOW refuses it with ELOOP). Errors
// are the system call's: ENOENT when a directory of the path is missing,
// ENOTDIR when one is not a directory (a lock file, or a symlink).
func (b *Backend) openBelow(path string, flags int, perm uint32) (int, error) {
	if !strings.Contains(path, "/") {
		return ignoringEINTR2(func() (int, error) { return unix.Openat(b.locksFd, path, flags, perm) })
	}
	if b.openat2 {
		how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(perm), Resolve: resolveBelow}
		fd, err := ignoringEINTR2(func() (int, error) { return unix.Openat2(b.locksFd, path, &how) })
		if err != unix.ELOOP {
			return fd, err
		}
		// A symlink at the end or in the path: the walk tells which
		// (ELOOP or ENOTDIR), as without openat2.
	}
	dir, base := lockengine.SplitName(path)
	fd := b.locksFd
	for comp := range strings.SplitSeq(dir, "/") {
		next, err := ignoringEINTR2(func() (int, error) {
			return unix.Openat(fd, comp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		})
		if fd != b.locksFd {
			closeFd(fd)
		}
		if err != nil {
			return -1, err
		}
		fd = next
	}
	defer closeFd(fd)
	return ignoringEINTR2(func() (int, error) { return unix.Openat(fd, base, flags, perm) })
}

// openDir opens lock directory path ("" is locks/ itself) with flags
// (O_PATH, or O_RDONLY to read it or change its attributes), refusing
// symlinks. A missing path, or one that is not a real directory, is an
// error wrapping lockengine.ErrNoDir.
func (b *Backend) openDir(path string, flags int) (int, error) {
	flags |= unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	var (
		fd  int
		err error
	)
	if path == "" {
		fd, err = ignoringEINTR2(func() (int, error) { return unix.Openat(b.locksFd, ".", flags, 0) })
	} else {
		fd, err = b.openBelow(path, flags, 0)
	}
	switch err {
	case nil:
		return fd, nil
	case unix.ENOENT:
		return -1, fmt.Errorf("lock directory %q: %w", path, lockengine.ErrNoDir)
	case unix.ENOTDIR, unix.ELOOP:
		return -1, fmt.Errorf("lock directory %q: %w: not a directory (or a symlink in the path)", path, lockengine.ErrNoDir)
	}
	return -1, fmt.Errorf("lock directory %q: open %s/locks/%s: %w", path, b.dir, path, err)
}

// statName stats name below locks/ without following a symlink at it;
// ENOTDIR (a directory of the path is now something else) reads as
// ENOENT: the lock file is gone.
func (b *Backend) statName(name string, st *unix.Stat_t) error {
	err := fstatat(b.locksFd, name, st)
	if err == unix.ENOTDIR {
		return unix.ENOENT
	}
	return err
}

// checkOpen returns ErrClosed once Close has begun.
func (b *Backend) checkOpen() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return lockengine.ErrClosed
	}
	return nil
}

// dirAttr returns the lock directory attributes of st.
func dirAttr(st *unix.Stat_t) lockengine.DirAttr {
	return lockengine.DirAttr{UID: st.Uid, GID: st.Gid, Mode: st.Mode & 0o7777,
		Mtime: time.Unix(st.Ctim.Unix())}
}

// StatDir implements lockengine.Tree: the owner, group and mode of
// locks/PATH; Mtime is its ctime (creation, attribute changes and lock
// files created or removed in it).
func (b *Backend) StatDir(ctx context.Context, path string) (lockengine.DirAttr, error) {
	if path == "" {
		return lockengine.DirAttr{}, nil
	}
	if err := lockengine.ValidateName(path); err != nil {
		return lockengine.DirAttr{}, err
	}
	if err := b.checkOpen(); err != nil {
		return lockengine.DirAttr{}, err
	}
	var st unix.Stat_t
	if !strings.Contains(path, "/") {
		// One system call for a top-level directory: AT_SYMLINK_NOFOLLOW
		// covers its only component.
		if err := fstatat(b.locksFd, path, &st); err != nil {
			if err == unix.ENOENT {
				return lockengine.DirAttr{}, fmt.Errorf("stat %q: %w", path, lockengine.ErrNoDir)
			}
			return lockengine.DirAttr{}, fmt.Errorf("stat %q: %w", path, err)
		}
	} else {
		fd, err := b.openDir(path, unix.O_PATH)
		if err != nil {
			return lockengine.DirAttr{}, fmt.Errorf("stat: %w", err)
		}
		err = unix.Fstat(fd, &st)
		closeFd(fd)
		if err != nil {
			return lockengine.DirAttr{}, fmt.Errorf("stat %q: %w", path, err)
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return lockengine.DirAttr{}, fmt.Errorf("stat %q: %w: a lock name, not a directory", path, lockengine.ErrNoDir)
	}
	return dirAttr(&st), nil
}

// setAttr gives the directory open as fd (a lock directory, path for
// messages) attr's owner, group and mode. Owner and group are changed
// only where they differ, so a daemon that is not root can still change
// the mode of its own directories; giving a directory away needs root
// (CAP_CHOWN) and otherwise fails with an error wrapping unix.EPERM (which
// is fs.ErrPermission). So does a mode the kernel did not store as asked.
func setAttr(fd int, path string, attr lockengine.DirAttr) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %q: %w", path, err)
	}
	uid, gid := int(attr.UID), int(attr.GID)
	if st.Uid == attr.UID {
		uid = -1
	}
	if st.Gid == attr.GID {
		gid = -1
	}
	if uid != -1 || gid != -1 {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			if err == unix.EPERM {
				return fmt.Errorf("chown %q to %d:%d: %w: lockfs runs as uid %d and cannot give lock directories "+
					"to other users or groups (run the daemon as root)", path, attr.UID, attr.GID, unix.EPERM, os.Geteuid())
			}
			return fmt.Errorf("chown %q: %w", path, err)
		}
	}
	// After the chown, which may clear the set-group-ID bit.
	if err := unix.Fchmod(fd, attr.Mode&0o7777); err != nil {
		if err == unix.EPERM {
			return fmt.Errorf("chmod %q: %w", path, unix.EPERM)
		}
		return fmt.Errorf("chmod %q: %w", path, err)
	}
	// The kernel drops the set-group-ID bit without an error when the
	// daemon is not in the directory's group and lacks CAP_FSETID.
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %q: %w", path, err)
	}
	if got := st.Mode & 0o7777; got != attr.Mode&0o7777 {
		return fmt.Errorf("chmod %q to %#o: the mode became %#o: %w: lockfs runs without CAP_FSETID",
			path, attr.Mode&0o7777, got, unix.EPERM)
	}
	return nil
}

// mkdirTries bounds how often Mkdir removes an unused lock file at the
// path and tries again, when acquirers keep creating it.
const mkdirTries = 8

// Mkdir implements lockengine.Tree. The directory is made in tmp/, given
// attr's owner, group and mode there (the umask and a set-group-ID parent
// do not interfere), and renamed into place with RENAME_NOREPLACE, so
// other processes see it complete with its attributes or not at all. An
// unused lock file at the path (a name used before) is removed the way
// the sweeper removes it (under its exclusive flock, its token saved in
// the floor); one that is flock-held fails with ErrExist. An acquirer of
// the name that opened the old file meanwhile fails to verify it, and its
// retry finds the directory (ErrIsDir).
func (b *Backend) Mkdir(ctx context.Context, path string, attr lockengine.DirAttr) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	if err := b.checkOpen(); err != nil {
		return err
	}
	dir, base := lockengine.SplitName(path)
	pfd, err := b.openDir(dir, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("mkdir %q: %w", path, err)
	}
	defer closeFd(pfd)
	tmpName := mkdirTmpPrefix + strconv.FormatUint(rand.Uint64(), 36)
	if err := unix.Mkdirat(b.tmpFd, tmpName, dirPerm); err != nil {
		return fmt.Errorf("mkdir %q: create in %s/tmp: %w", path, b.dir, err)
	}
	placed := false
	defer func() {
		if !placed {
			_ = unix.Unlinkat(b.tmpFd, tmpName, unix.AT_REMOVEDIR)
		}
	}()
	fd, err := unix.Openat(b.tmpFd, tmpName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mkdir %q: open in %s/tmp: %w", path, b.dir, err)
	}
	err = setAttr(fd, path, attr)
	closeFd(fd)
	if err != nil {
		return fmt.Errorf("mkdir %q: %w", path, err)
	}
	for try := 1; ; try++ {
		err := unix.Renameat2(b.tmpFd, tmpName, pfd, base, unix.RENAME_NOREPLACE)
		switch err {
		case nil:
			placed = true
			return nil
		case unix.ENOENT:
			return fmt.Errorf("mkdir %q: %w: its parent was removed", path, lockengine.ErrNoDir)
		case unix.EEXIST, unix.ENOTEMPTY:
		default:
			return fmt.Errorf("mkdir %q: rename into place: %w", path, err)
		}
		var st unix.Stat_t
		if err := fstatat(pfd, base, &st); err != nil {
			continue // gone meanwhile: try again
		}
		switch t := st.Mode & unix.S_IFMT; {
		case t == unix.S_IFDIR:
			return fmt.Errorf("mkdir %q: %w: the directory exists", path, lockengine.ErrExist)
		case t != unix.S_IFREG:
			return fmt.Errorf("mkdir %q: %w: a %s is at %s/locks/%s", path, lockengine.ErrExist, fileTypeName(t), b.dir, path)
		case try >= mkdirTries || !b.removeIfUnused(path):
			return fmt.Errorf("mkdir %q: %w: a lock of that name is held", path, lockengine.ErrExist)
		}
	}
}

// mkdirTmpPrefix starts the names of directories Mkdir prepares in tmp/;
// leftovers of a crash are removed by the sweeper.
const mkdirTmpPrefix = "mkdir-"

// Rmdir implements lockengine.Tree. The unused lock files in the directory
// are removed first, each the way the sweeper removes it (under its
// exclusive flock); a held one, a subdirectory or anything else in it
// fails with ErrNotEmpty. A lock file created meanwhile makes the final
// rmdir fail with ENOTEMPTY, also ErrNotEmpty. A name that another
// process only waits for, while nobody holds it, is not seen: its waiter
// fails with ErrNoDir.
func (b *Backend) Rmdir(ctx context.Context, path string) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	if err := b.checkOpen(); err != nil {
		return err
	}
	dir, base := lockengine.SplitName(path)
	pfd, err := b.openDir(dir, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("rmdir %q: %w", path, err)
	}
	defer closeFd(pfd)
	dfd, err := b.openDir(path, unix.O_RDONLY)
	if err != nil {
		return fmt.Errorf("rmdir %q: %w", path, err)
	}
	// Open while the directory is removed below: Linux removes it all
	// the same.
	defer closeFd(dfd)
	names, err := readDirNames(dfd)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("rmdir %q: %w: removed meanwhile", path, lockengine.ErrNoDir)
		}
		return fmt.Errorf("rmdir %q: read: %w", path, err)
	}
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("rmdir %q: %w", path, err)
		}
		var st unix.Stat_t
		if err := fstatat(dfd, n, &st); err != nil {
			continue // removed meanwhile
		}
		switch t := st.Mode & unix.S_IFMT; {
		case t == unix.S_IFDIR:
			return fmt.Errorf("rmdir %q: %w: it has subdirectory %q", path, lockengine.ErrNotEmpty, n)
		case t != unix.S_IFREG || lockengine.ValidateComponent(n) != nil:
			return fmt.Errorf("rmdir %q: %w: a %s %q is in it", path, lockengine.ErrNotEmpty, fileTypeName(t), n)
		case !b.removeIfUnused(lockengine.JoinName(path, n)):
			return fmt.Errorf("rmdir %q: %w: lock %q is held", path, lockengine.ErrNotEmpty, lockengine.JoinName(path, n))
		}
	}
	switch err := unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR); err {
	case nil:
		return nil
	case unix.ENOTEMPTY, unix.EEXIST:
		return fmt.Errorf("rmdir %q: %w: a lock was taken in it meanwhile", path, lockengine.ErrNotEmpty)
	case unix.ENOENT, unix.ENOTDIR:
		return fmt.Errorf("rmdir %q: %w", path, lockengine.ErrNoDir)
	default:
		return fmt.Errorf("rmdir %q: %w", path, err)
	}
}

// SetDirAttr implements lockengine.Tree: chown and chmod of the directory.
func (b *Backend) SetDirAttr(ctx context.Context, path string, attr lockengine.DirAttr) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	if err := b.checkOpen(); err != nil {
		return err
	}
	fd, err := b.openDir(path, unix.O_RDONLY)
	if err != nil {
		return fmt.Errorf("setattr: %w", err)
	}
	defer closeFd(fd)
	return setAttr(fd, path, attr)
}

// ReadDir implements lockengine.Tree: the subdirectories of locks/PATH.
func (b *Backend) ReadDir(ctx context.Context, path string) ([]string, error) {
	if path != "" {
		if err := lockengine.ValidateName(path); err != nil {
			return nil, err
		}
	}
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	fd, err := b.openDir(path, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("readdir: %w", err)
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("readdir %q: %w: removed meanwhile", path, lockengine.ErrNoDir)
		}
		return nil, fmt.Errorf("readdir %q: %w", path, err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && lockengine.ValidateComponent(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// walkLocks calls visit for everything below locks/ that is not a
// directory, with the descriptor of its directory (valid during the call
// only), the lock directory's path and the entry's name and stat. It
// descends at most lockengine.MaxDepth levels, never through a symlink.
// Entries that vanish meanwhile are skipped; an error of visit ends the
// walk.
func (b *Backend) walkLocks(visit func(dirfd int, dir, name string, st *unix.Stat_t) error) error {
	return b.walkDir(b.locksFd, "", 0, visit)
}

func (b *Backend) walkDir(dirfd int, dir string, depth int, visit func(int, string, string, *unix.Stat_t) error) error {
	names, err := readDirNames(dirfd)
	if err != nil {
		if dir == "" {
			return fmt.Errorf("read %s/locks: %w", b.dir, err)
		}
		return nil // removed meanwhile
	}
	for _, n := range names {
		var st unix.Stat_t
		if fstatat(dirfd, n, &st) != nil {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := visit(dirfd, dir, n, &st); err != nil {
				return err
			}
			continue
		}
		if depth+1 >= lockengine.MaxDepth {
			continue
		}
		sub, err := unix.Openat(dirfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		err = b.walkDir(sub, lockengine.JoinName(dir, n), depth+1, visit)
		closeFd(sub)
		if err != nil {
			return err
		}
	}
	return nil
}
