package fsnode

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// Inspection: attributes, extended attributes and unlink of lock files.
// None of these takes or waits for a lock; they read lockengine.Engine's
// Inspect, which never blocks on a lock.

// Extended attributes of a lock file (getfattr -d M/NAME). Values are text
// without a trailing newline, except XattrHolders, which has one line per
// holder, each ending in a newline.
const (
	// XattrPrefix is the namespace of lockfs's attributes.
	XattrPrefix = "user.lockfs."
	// XattrToken: the fencing token of the current grant, decimal; 0 when
	// nothing holds the name.
	XattrToken = XattrPrefix + "token"
	// XattrMode: "exclusive", "shared", or "" when nothing holds the name.
	XattrMode = XattrPrefix + "mode"
	// XattrState: "held", "lost", "waiting" or "free".
	XattrState = XattrPrefix + "state"
	// XattrHolders: one line per lease, "UID GID PID MODE TOKEN GRANTED
	// VIA" (GRANTED in RFC 3339 with nanoseconds; VIA the interface that
	// took it: open, flock or posix, "-" for the engine's own lease during
	// a lock-delay), current holders first in grant order, then lost
	// leases not yet closed, which carry an eighth field "lost". PID is in
	// the daemon's pid namespace: 0 for a holder not visible from it.
	//
	// The value never exceeds MaxHoldersLen bytes (getxattr(2) cannot
	// return more than 64 KiB): when the lines do not all fit, it lists
	// as many as fit and ends with the line "... N more" (HoldersMore),
	// where N is the number of leases left out.
	XattrHolders = XattrPrefix + "holders"
	// XattrWaiters: the number of queued requests (opens and lock calls),
	// decimal.
	XattrWaiters = XattrPrefix + "waiters"
	// XattrAcquired: when the current holders were granted (RFC 3339,
	// nanoseconds); "" when none.
	XattrAcquired = XattrPrefix + "acquired"
	// XattrHeartbeat: when the backend last refreshed the grant (RFC 3339,
	// nanoseconds); "" when none.
	XattrHeartbeat = XattrPrefix + "heartbeat"
	// XattrCause: why the lock was lost (state lost only).
	XattrCause = XattrPrefix + "cause"
	// XattrLimit: how many exclusive holders the name admits at once
	// (a counting semaphore when above 1), decimal. Root may set it with
	// setxattr; it lives in the daemon's memory (see Engine.SetLimit).
	XattrLimit = XattrPrefix + "limit"
)

// MaxHoldersLen is the most bytes XattrHolders has, its last line
// included: below XATTR_SIZE_MAX (65536), with room to spare.
const MaxHoldersLen = 60 * 1024

// HoldersMore is the format of the last line of a truncated XattrHolders
// (fmt.Sscanf with it reads the number of leases left out).
const HoldersMore = "... %d more"

// xattrNames is the Listxattr answer: every name NUL-terminated. The cause
// is listed only while the state is lost.
var xattrNames = []string{XattrToken, XattrMode, XattrState, XattrHolders, XattrWaiters,
	XattrAcquired, XattrHeartbeat, XattrLimit}

// stateString is the text of XattrState: the engine's state, "free" for
// none.
func stateString(s lockengine.State) string {
	if s == lockengine.StateNone {
		return "free"
	}
	return s.String()
}

func modeString(m lockengine.Mode) string {
	if !m.Valid() {
		return ""
	}
	return m.String()
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// holdersString formats XattrHolders, at most limit bytes (see
// MaxHoldersLen): the lines that fit, then "... N more" for the rest.
func holdersString(leases []lockengine.LeaseInfo, limit int) string {
	// Room for the last line however many leases are left out.
	reserve := len(fmt.Sprintf(HoldersMore+"\n", len(leases)))
	var b strings.Builder
	var line []byte
	for i, l := range leases {
		line = fmt.Appendf(line[:0], "%d %d %d %s %d %s %s", l.Owner.UID, l.Owner.GID, l.Owner.PID, l.Mode,
			l.Token, timeString(l.Granted), l.Owner.Via)
		if l.Lost {
			line = append(line, " lost"...)
		}
		line = append(line, '\n')
		room := limit - reserve
		if i == len(leases)-1 {
			room = limit // the last line needs no "more" after it
		}
		if b.Len()+len(line) > room {
			fmt.Fprintf(&b, HoldersMore+"\n", len(leases)-i)
			break
		}
		b.Write(line)
	}
	return b.String()
}

// xattrValue returns the value of the lockfs attribute attr of info, and
// false for names lockfs does not have.
func xattrValue(info lockengine.LockInfo, attr string) (string, bool) {
	switch attr {
	case XattrToken:
		return strconv.FormatUint(info.Token, 10), true
	case XattrMode:
		return modeString(info.Mode), true
	case XattrState:
		return stateString(info.State), true
	case XattrHolders:
		return holdersString(info.Leases, MaxHoldersLen), true
	case XattrWaiters:
		return strconv.Itoa(info.Waiters), true
	case XattrAcquired:
		if info.State == lockengine.StateWaiting {
			return "", true
		}
		return timeString(info.Since), true
	case XattrHeartbeat:
		return timeString(info.Heartbeat), true
	case XattrCause:
		if info.State != lockengine.StateLost {
			return "", false
		}
		return info.LostCause, true
	}
	return "", false
}

// copyXattr implements the getxattr/listxattr size protocol: a zero-length
// dest asks for the size; a too small one is ERANGE.
func copyXattr(dest []byte, val string) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(val)), 0
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

// inspect returns the engine's view of the node's name (the zero LockInfo
// with StateNone when nothing holds or waits for it).
func (n *lockNode) inspect() lockengine.LockInfo {
	info, ok := n.fsys.eng.Inspect(n.name)
	if !ok {
		return lockengine.LockInfo{Name: n.name}
	}
	return info
}

// Getattr reports an empty regular file with the owner and group of its
// lock directory and the read and write bits of the directory's mode (see
// tree.go), whose mtime and ctime are the grant time of the first holder
// as the engine lists it (the earliest granted current lease; during a
// lock-delay the engine's own; else the earliest lost lease not yet
// closed; the daemon's start when none) and whose atime is the last
// heartbeat. The kernel keeps them for the attribute timeout. It never
// waits for the lock. ENOENT once the directory is gone.
func (n *lockNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a, err := n.dirAttr(ctx)
	if err != nil {
		return n.fsys.fail("getattr", n.name, 0, err)
	}
	n.fsys.fileAttr(&out.Attr, a)
	holderTimes(&out.Attr, n.inspect())
	out.SetTimeout(n.fsys.attrTimeout)
	return 0
}

// dirAttr returns the attributes of the lock directory of the node's name.
func (n *lockNode) dirAttr(ctx context.Context) (lockengine.DirAttr, error) {
	dir, _ := lockengine.SplitName(n.name)
	return n.fsys.dirAttr(ctx, dir)
}

// holderTimes sets the times of a lock file's attributes from info's first
// lease (the engine lists current leases first, in grant order). Who holds
// the lock is in the user.lockfs.holders attribute; the file's owner is
// its directory's, so that the kernel's permission checks use it.
func holderTimes(a *fuse.Attr, info lockengine.LockInfo) {
	if len(info.Leases) == 0 {
		return
	}
	since, hb := info.Since, info.Heartbeat
	if since.IsZero() {
		since = info.Leases[0].Granted
	}
	if hb.IsZero() {
		hb = since
	}
	a.SetTimes(&hb, &since, &since)
}

// Getxattr answers user.lockfs.* from the engine (never waiting for the
// lock) and ENODATA for everything else, security.* included, at once.
func (n *lockNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if !strings.HasPrefix(attr, XattrPrefix) {
		return 0, syscall.ENODATA
	}
	if attr == XattrLimit {
		return copyXattr(dest, strconv.Itoa(n.fsys.eng.Limit(n.name)))
	}
	val, ok := xattrValue(n.inspect(), attr)
	if !ok {
		return 0, syscall.ENODATA
	}
	return copyXattr(dest, val)
}

// Listxattr lists the user.lockfs.* attributes.
func (n *lockNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var b strings.Builder
	for _, name := range xattrNames {
		b.WriteString(name)
		b.WriteByte(0)
	}
	if n.inspect().State == lockengine.StateLost {
		b.WriteString(XattrCause)
		b.WriteByte(0)
	}
	return copyXattr(dest, b.String())
}

// Setxattr sets user.lockfs.limit (root only: raising a limit lets more
// holders in at once); every other attribute is read-only: EPERM.
func (n *lockNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if attr != XattrLimit {
		return syscall.EPERM
	}
	if c, ok := fuse.FromContext(ctx); !ok || c.Uid != 0 {
		return n.fsys.fail("setxattr", n.name, 0, fmt.Errorf("lock %q: only root may set %s: %w", n.name, attr, syscall.EPERM))
	}
	limit, err := parseLimit(data)
	if err != nil {
		return n.fsys.fail("setxattr", n.name, 0, fmt.Errorf("lock %q: %s: %w", n.name, attr, err))
	}
	if err := n.fsys.eng.SetLimit(n.name, limit); err != nil {
		return n.fsys.fail("setxattr", n.name, 0, err)
	}
	n.fsys.log.Info("lock limit set", "lock", n.name, "limit", limit)
	return 0
}

// parseLimit parses a value written to XattrLimit: a decimal integer,
// surrounding white space allowed (echo adds a newline). Errors wrap
// lockengine.ErrInvalidLimit; the range (at least 1) is the engine's
// SetLimit's to check.
func parseLimit(data []byte) (int, error) {
	limit, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("%q: %w", data, lockengine.ErrInvalidLimit)
	}
	return limit, nil
}

// Removexattr refuses: EPERM.
func (n *lockNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EPERM
}

// Unlink breaks the lock name (an administrator's "rm M/NAME"): every
// holder's descriptor fails with EIO from then on, and waiters are granted
// after the engine's lock-delay. The kernel has checked write and search
// permission on the directory (and its sticky bit, which the root has
// not by default). The caller must be root, or own every lease currently
// granted on the name (a lone holder breaking its own lock); anyone else,
// a co-holder of a shared lock or a semaphore included, gets EPERM. A
// name nobody holds in this daemon is ENOENT; a name held only by the
// engine during its lock-delay after a break is EBUSY (see Engine.Break).
func (d *lockDir) Unlink(ctx context.Context, name string) syscall.Errno {
	full := lockengine.JoinName(d.path, name)
	if err := validLockName(name); err != nil {
		return d.fsys.fail("unlink", full, 0, err)
	}
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return d.fsys.fail("unlink", full, 0, fmt.Errorf("lock %q: unknown caller: %w", full, syscall.EPERM))
	}
	by := lockengine.Owner{UID: c.Uid, GID: c.Gid, PID: c.Pid}
	if err := d.fsys.eng.Break(ctx, full, by); err != nil {
		return d.fsys.fail("unlink", full, 0, err)
	}
	return 0
}
