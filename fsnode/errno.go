package fsnode

import (
	"context"
	"errors"
	"log/slog"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// errTimedOut is the cancellation cause of a .timeout/SECS wait that ran out.
var errTimedOut = errors.New("fsnode: lock wait timed out")

// Errno maps an error from a lockengine.Engine call (or from path parsing)
// to the errno the filesystem returns for it. nil maps to 0. It is the one
// place where lockfs chooses errnos:
//
//   - context cancellation (FUSE_INTERRUPT: a signal to the caller): EINTR
//   - lockengine.ErrWouldBlock (O_NONBLOCK, .try, .timeout expiry): EAGAIN
//   - lockengine.ErrNameTooLong: ENAMETOOLONG
//   - lockengine.ErrInvalidName, lockengine.ErrInvalidMode,
//     lockengine.ErrInvalidLimit: EINVAL
//   - lockengine.ErrNotHeld (unlink of a name nobody holds here): ENOENT
//   - lockengine.ErrNoDir (a lock directory, or a name's, does not exist):
//     ENOENT
//   - lockengine.ErrIsDir (locking a lock directory): EISDIR
//   - lockengine.ErrExist (mkdir of a directory or of a name in use): EEXIST
//   - lockengine.ErrNotEmpty (rmdir of a directory in use): ENOTEMPTY
//   - lockengine.ErrPermission (unlink by neither root nor the owner of
//     every current lease): EPERM
//   - lockengine.ErrLockDelay (unlink during a break's lock-delay): EBUSY
//   - a syscall.Errno in the chain that names the cause better than EIO
//     (EACCES, EPERM, EROFS, ENOSPC, EDQUOT, EMFILE, ENFILE, ENOMEM,
//     ENOLCK): that errno
//   - anything else (lost lease, engine closed, backend failure): EIO
func Errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, lockengine.ErrWouldBlock), errors.Is(err, errTimedOut):
		return syscall.EAGAIN
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	case errors.Is(err, lockengine.ErrNameTooLong):
		return syscall.ENAMETOOLONG
	case errors.Is(err, lockengine.ErrInvalidName), errors.Is(err, lockengine.ErrInvalidMode),
		errors.Is(err, lockengine.ErrInvalidLimit):
		return syscall.EINVAL
	case errors.Is(err, lockengine.ErrLockDelay):
		return syscall.EBUSY
	case errors.Is(err, lockengine.ErrNotHeld):
		return syscall.ENOENT
	case errors.Is(err, lockengine.ErrNoDir):
		return syscall.ENOENT
	case errors.Is(err, lockengine.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, lockengine.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, lockengine.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, lockengine.ErrPermission):
		return syscall.EPERM
	case errors.Is(err, lockengine.ErrLost), errors.Is(err, lockengine.ErrClosed),
		errors.Is(err, lockengine.ErrReleased), errors.Is(err, lockengine.ErrNotRegular):
		return syscall.EIO
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EACCES, syscall.EPERM, syscall.EROFS, syscall.ENOSPC, syscall.EDQUOT,
			syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.ENOLCK:
			return en
		}
	}
	return syscall.EIO
}

// logLevel is how loudly a failure with errno e is logged: expected outcomes
// (contention, signals) at debug, bad input at info, the rest at error.
func logLevel(e syscall.Errno) slog.Level {
	switch e {
	case syscall.EAGAIN, syscall.EINTR:
		return slog.LevelDebug
	case syscall.ENAMETOOLONG, syscall.EINVAL, syscall.EPERM, syscall.EISDIR, syscall.ENOENT, syscall.EBUSY,
		syscall.EACCES, syscall.EEXIST, syscall.ENOTEMPTY, syscall.EDQUOT:
		return slog.LevelInfo
	}
	return slog.LevelError
}

// fail logs the failure of op on lock name (or lock directory; mode 0
// when there is none) with its cause, and returns the errno to hand to the
// kernel.
func (f *filesystem) fail(op, name string, mode lockengine.Mode, err error) syscall.Errno {
	e := Errno(err)
	lvl := logLevel(e)
	if !f.log.Enabled(context.Background(), lvl) {
		return e
	}
	attrs := make([]slog.Attr, 0, 4)
	attrs = append(attrs, slog.String("lock", name))
	if mode != 0 {
		attrs = append(attrs, slog.String("mode", mode.String()))
	}
	attrs = append(attrs, slog.String("errno", unix.ErrnoName(e)), slog.Any("err", err))
	f.log.LogAttrs(context.Background(), lvl, op+" failed", attrs...)
	return e
}
