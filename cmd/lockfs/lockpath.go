package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/lockengine"
)

// defaultMount is the mountpoint the client commands (status, run, break)
// use when neither --mount nor $LOCKFS_MOUNT says otherwise.
const defaultMount = "/mnt/locks"

// mountEnv names the environment variable with the default mountpoint.
const mountEnv = "LOCKFS_MOUNT"

// mountOrDefault returns m, else $LOCKFS_MOUNT, else /mnt/locks.
func mountOrDefault(m string) string {
	if m != "" {
		return m
	}
	if e := os.Getenv(mountEnv); e != "" {
		return e
	}
	return defaultMount
}

// errNotLockfs: the directory is not a lockfs mount.
var errNotLockfs = errors.New("not a lockfs mount")

// checkLockfsDir returns an error (wrapping errNotLockfs) unless dir is
// on a FUSE filesystem (statfs f_type): a mount's root or a directory in
// it, which for lockfs paths means a lockfs mount or a lock directory. It
// does not take any lock.
func checkLockfsDir(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if st.Type != mountinfo.FUSESuperMagic {
		return fmt.Errorf("%s: %w (mount one with 'lockfs mount %s', or pass --mount)", dir, errNotLockfs, dir)
	}
	return nil
}

// lockTarget splits NAME, a lock name relative to mount or an absolute
// path MOUNT/NAME, into the mount directory and the lock name. For an
// absolute path in a lock directory of a lockfs mount (M/team/deploy),
// the directory is the mount's root and the lock its path from there
// (team/deploy), so that the reserved views (M/.try/team/deploy) are
// found; elsewhere the last component is the lock.
func lockTarget(mount, name string) (dir, lock string, err error) {
	if filepath.IsAbs(name) {
		// Dir and Base drop trailing slashes differently: "/m/x/"
		// would become the lock x in the directory /m/x.
		if strings.HasSuffix(name, "/") {
			return "", "", usageErrorf("lock path %q ends in '/': give the path of the lock file", name)
		}
		dir, lock = filepath.Dir(name), filepath.Base(name)
		if root, rel, ok := mountRoot(dir); ok && rel != "" && filepath.Join(root, rel) == dir &&
			checkLockfsDir(dir) == nil {
			dir, lock = root, rel+"/"+lock
		}
	} else {
		if strings.Contains(name, "/") {
			return "", "", usageErrorf("lock name %q contains '/': give a name, or an absolute path into the mount", name)
		}
		dir, lock = mountOrDefault(mount), name
	}
	if err := lockengine.ValidateName(lock); err != nil {
		return "", "", usageErrorf("%w", err)
	}
	for c := range strings.SplitSeq(lock, "/") {
		if fsnode.IsReserved(c) {
			return "", "", usageErrorf("lock name %q: %q is reserved (a view, not a lock)", lock, c)
		}
	}
	return dir, lock, nil
}
