package fsnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// openFlags are the FOPEN_* flags of a handle whose open took the lock.
//
//   - FOPEN_NOFLUSH: close(2) does not wait for a FLUSH round trip; the lock
//     is released on RELEASE, never on FLUSH.
//   - FOPEN_DIRECT_IO: reads and writes bypass the page cache, so every
//     read/write reaches the handle (and fails with EIO once the lock is
//     lost) instead of being answered from a cached empty file.
const openFlags = fuse.FOPEN_NOFLUSH | fuse.FOPEN_DIRECT_IO

// callFlags returns the FOPEN_* flags of a handle whose open took nothing:
// its locks come from lock calls. A descriptor that can write keeps FLUSH,
// because POSIX record locks of a process are released when it closes any
// descriptor of the file, and FLUSH is how the kernel says so (with the
// lock owner). A read-only descriptor can take only read locks with fcntl
// (F_WRLCK needs write access), and it is what flock(1) and every
// flock(2) user opens, so it skips the FLUSH round trip (one of the five
// of open+flock+unlock+close): a read lock taken through it is
// released with the descriptor's last close or the process's exit, not
// when the process closes another descriptor of the name.
func callFlags(flags uint32) uint32 {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH
	}
	return fuse.FOPEN_DIRECT_IO
}

// lockNode is a lock file: M/NAME or the same name under a reserved
// directory. Its fields are set at creation and never change.
type lockNode struct {
	fs.Inode
	fsys   *filesystem
	name   string // the lock name
	policy policy // whether and how Open takes the lock

	// open counts the handles of this node not yet released; counted's
	// used is set by every lookup and open. The sweep (sweep.go)
	// invalidates the kernel's entry of a node with neither, so that its
	// inode is forgotten.
	open atomic.Int32
	counted
}

var _ fs.NodeOnForgetter = (*lockNode)(nil)

// OnForget runs when the kernel has forgotten the inode (and no handle is
// open): the name no longer counts against the limits of the uids that
// looked it up, and the inode count drops.
func (n *lockNode) OnForget() { n.fsys.forgetNode(n) }

// Setattr accepts and ignores every change the kernel lets through
// (truncate from O_TRUNC or ftruncate, utimes; chmod and chown need the
// directory's owner or root) and reports the unchanged attributes: the
// file is always empty, and its owner and mode are its directory's.
func (n *lockNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return n.Getattr(ctx, f, out)
}

// Statfs reports NAME_MAX.
func (n *lockNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	statfs(out)
	return 0
}

// withOwner records the FUSE caller of ctx, and the interface it used, as
// the owner of the requests made with the returned context (the kernel
// reports pid 0 for callers in another pid namespace).
func withOwner(ctx context.Context, via lockengine.Via) context.Context {
	o := lockengine.Owner{Via: via}
	if c, ok := fuse.FromContext(ctx); ok {
		o.UID, o.GID, o.PID = c.Uid, c.Gid, c.Pid
	}
	return lockengine.WithOwner(ctx, o)
}

// Open takes the lock when the node's policy says the open does (see
// policy.openLock), waiting as the policy says. It is the only operation
// of lockfs besides a blocking lock call (Setlkw) that waits. When ctx is
// cancelled (FUSE_INTERRUPT: the caller got a signal) it returns EINTR and
// holds nothing; a grant that raced with the cancellation is returned as a
// success, and the kernel then sends RELEASE for it.
//
// A read-only open that locks needs write permission on the name's
// directory (EACCES; see tree.go). The per-user limits (limits.go) are
// checked first: the name (an open by
// a uid that did not look it up itself), then, for an open that locks, the
// held leases, and before waiting the waiting requests. Past a limit the
// open fails at once with ENOLCK.
func (n *lockNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.used.Store(true)
	if err := n.fsys.lim.chargeName(ctx, n); err != nil {
		return nil, 0, Errno(err)
	}
	mode, try, take := n.policy.openLock(flags)
	if !take {
		return n.fsys.newHandle(n, nil), callFlags(flags), 0
	}
	// The kernel checked a write open against the file's attributes,
	// which are the directory's write bits (see tree.go); a read-only
	// open that locks needs the same permission, which only the daemon
	// can check.
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		if err := n.fsys.mayLock(ctx, n.name); err != nil {
			return nil, 0, n.fsys.fail("open", n.name, mode, err)
		}
	}
	uid, reserved, err := n.fsys.lim.reserveHeld(ctx)
	if err != nil {
		return nil, 0, Errno(err)
	}
	lease, err := n.fsys.acquire(withOwner(ctx, lockengine.ViaOpen), n.name, mode, n.policy, try)
	if err == nil && lease == nil {
		err = fmt.Errorf("lock %q: engine returned neither lease nor error", n.name)
	}
	if err != nil {
		if lease != nil {
			_ = lease.Release()
		}
		if reserved {
			n.fsys.lim.unreserveHeld(uid)
		}
		if errors.Is(err, syscall.ENOLCK) {
			return nil, 0, Errno(err) // logged by the limiter, rate-limited
		}
		return nil, 0, n.fsys.fail("open", n.name, mode, err)
	}
	if n.fsys.log.Enabled(context.Background(), slog.LevelDebug) {
		n.fsys.log.Debug("lock granted", "lock", n.name, "mode", mode.String(), "token", lease.Token(), "via", "open")
	}
	h := n.fsys.newHandle(n, lease)
	if reserved {
		n.fsys.lim.settle(h.slot, uid, true)
	}
	return h, openFlags, 0
}

// acquire asks the engine for name in mode: once when try is set, else
// waiting according to p.
func (f *filesystem) acquire(ctx context.Context, name string, mode lockengine.Mode, p policy, try bool) (*lockengine.Lease, error) {
	if try {
		return f.eng.TryAcquire(ctx, name, mode)
	}
	// Try first: an open that finds the name held (typically because it
	// overtook the asynchronous RELEASE of the previous holder's close)
	// is recorded as parked, so that the Release that frees the name
	// lets it run at once (see handle.Release).
	if lease, err := f.eng.TryAcquire(ctx, name, mode); err == nil || !errors.Is(err, lockengine.ErrWouldBlock) {
		return lease, err
	}
	endWait, err := f.lim.beginWait(ctx)
	if err != nil {
		return nil, err
	}
	defer endWait()
	defer f.park(name)()
	if p.kind == waitTimeout {
		tctx, cancel := context.WithTimeoutCause(ctx, p.timeout, errTimedOut)
		defer cancel()
		lease, err := f.eng.Acquire(tctx, name, mode)
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(tctx), errTimedOut) {
			return nil, fmt.Errorf("lock %q: not granted within %v: %w", name, p.timeout, errTimedOut)
		}
		return lease, err
	}
	return f.eng.Acquire(ctx, name, mode)
}

// handle is one open file description of a lock file. Its slot is the
// description's own lock: the lease its open took, if any, and the locks
// that flock(2) calls (and fcntl calls that act on it, see lockcalls.go)
// take, convert and release through it. The slot is released on RELEASE.
type handle struct {
	fsys *filesystem
	node *lockNode // nil in tests that build handles directly
	name string
	slot *lockengine.Slot
	// released is set by the first Release; a second one is a bug.
	released atomic.Bool
	// rec caches the holder record returned by Read, for one lease.
	rec atomic.Pointer[record]
	// lossLogged is set once the loss of the lease has been logged at
	// warn level, so a client looping on EIO does not flood the log.
	lossLogged atomic.Bool
}

// record is a formatted holder record and the lease it describes.
type record struct {
	lease *lockengine.Lease
	text  []byte
}

func (f *filesystem) newHandle(n *lockNode, lease *lockengine.Lease) *handle {
	n.open.Add(1)
	return &handle{fsys: f, node: n, name: n.name, slot: lockengine.NewSlot(f.eng, n.name, lease)}
}

// lease returns the lease the descriptor holds: its slot's, else that of a
// POSIX lock taken through it; nil when it holds nothing.
func (h *handle) lease() *lockengine.Lease {
	if l := h.slot.Lease(); l != nil {
		return l
	}
	return h.fsys.posixLeaseVia(h)
}

// check returns 0 while the descriptor's lease is held, or when it holds
// none, and EIO (logging op) once its lease has ended (lost, or the engine
// closed).
func (h *handle) check(op string) syscall.Errno {
	l := h.lease()
	if l == nil {
		return 0
	}
	err := l.Err()
	if err == nil || errors.Is(err, lockengine.ErrReleased) {
		return 0
	}
	lvl := slog.LevelDebug
	if h.lossLogged.CompareAndSwap(false, true) {
		lvl = slog.LevelWarn
	}
	h.fsys.log.Log(context.Background(), lvl, op+" failed: lock no longer held", "lock", l.Name(),
		"mode", l.Mode().String(), "token", l.Token(), "err", err)
	return Errno(err)
}

// Read returns the holder record (see Record) while the lock is held and
// EIO once it is lost.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := h.check("read"); e != 0 {
		return nil, e
	}
	rec := h.record()
	if rec == nil {
		return fuse.ReadResultData(nil), 0
	}
	if off < 0 || off >= int64(len(rec)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(int64(len(rec)), off+int64(len(dest)))
	return fuse.ReadResultData(rec[off:end]), 0
}

// record returns the holder record of the descriptor's lease, formatting
// it on first use; nil when it holds nothing.
func (h *handle) record() []byte {
	l := h.lease()
	if l == nil {
		return nil
	}
	if r := h.rec.Load(); r != nil && r.lease == l {
		return r.text
	}
	r := &record{lease: l, text: Record(l.Name(), l.Mode(), l.Token(), l.Owner(), l.Granted())}
	h.rec.Store(r)
	return r.text
}

// Record is what a holder reads from its lock descriptor: the decimal
// fencing token alone on the first line (so that the shell's
// "read -r tok <&9" yields the token), then one line
//
//	name=NAME mode=MODE token=TOKEN uid=UID gid=GID pid=PID acquired=TIME
//
// with TIME in RFC 3339 with nanoseconds (UTC) and NAME quoted as a Go
// string when it holds spaces, "=", quotes, backslashes or non-printable
// characters.
// PID is in the daemon's pid namespace: 0 for a holder not visible from it.
func Record(name string, mode lockengine.Mode, token uint64, o lockengine.Owner, granted time.Time) []byte {
	n := name
	if strings.ContainsAny(n, " \t\n\"\\=") || strings.ContainsFunc(n, func(r rune) bool { return !unicode.IsPrint(r) }) {
		n = strconv.Quote(n)
	}
	return fmt.Appendf(nil, "%d\nname=%s mode=%s token=%d uid=%d gid=%d pid=%d acquired=%s\n",
		token, n, mode, token, o.UID, o.GID, o.PID, granted.UTC().Format(time.RFC3339Nano))
}

// Write accepts and discards data while the lock is held; EIO once it is
// lost.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if e := h.check("write"); e != 0 {
		return 0, e
	}
	return uint32(len(data)), 0
}

// Writev is Write for a vector of buffers.
func (h *handle) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if e := h.check("write"); e != 0 {
		return 0, e
	}
	var n uint32
	for _, b := range data {
		n += uint32(len(b))
	}
	return n, 0
}

// Fsync succeeds while the lock is held and fails with EIO once it is lost,
// so a holder can ask "do I still hold it?" with fsync(2).
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.check("fsync")
}

// Release gives the descriptor's locks back: its slot, and the POSIX locks
// taken through it that no FLUSH released. The kernel sends it once, when
// the last descriptor of the open file description is closed (or its
// holder dies). It must stay fast: RELEASE counts against the kernel's
// max_background.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.released.Swap(true) {
		h.fsys.log.Error("bug: lock file handle released twice", "lock", h.name)
		return 0
	}
	l := h.slot.Lease()
	if err := h.slot.Close(); err != nil {
		h.fsys.fail("release", h.name, 0, err)
	}
	h.fsys.lim.uncharge(h.slot)
	h.fsys.dropPosixVia(h)
	if h.node != nil {
		h.node.open.Add(-1)
	}
	if l != nil && h.fsys.log.Enabled(context.Background(), slog.LevelDebug) {
		h.fsys.log.Debug("lock released", "lock", h.name, "mode", l.Mode().String(), "token", l.Token())
	}
	h.fsys.yieldToParked(h.name)
	return 0
}

// yieldToParked lets a request waiting for name run when a release has just
// made it runnable, and answer its OPEN or SETLKW before this goroutine goes
// back to read(2) on /dev/fuse: with GOMAXPROCS=1 it would otherwise wait
// for the runtime's sysmon to take the P back (~100 us).
func (f *filesystem) yieldToParked(name string) {
	if f.hasParked(name) {
		runtime.Gosched()
	}
}
