package dirlock

import (
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

func flock(fd, how int) error {
	return ignoringEINTR(func() error { return unix.Flock(fd, how) })
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

func ignoringEINTR2(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func flockHow(m lockengine.Mode) int {
	if m == lockengine.Exclusive {
		return unix.LOCK_EX
	}
	return unix.LOCK_SH
}

// fstatat stats name relative to dirfd without following a symlink.
func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	return ignoringEINTR(func() error { return unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW) })
}

func closeFd(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}
