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

// openFlags are the FOPEN_* flags of every lock file handle.
//
//   - FOPEN_NOFLUSH: close(2) does not wait for a FLUSH round trip; the lock
//     is released on RELEASE, never on FLUSH.
//   - FOPEN_DIRECT_IO: reads and writes bypass the page cache, so every
//     read/write reaches the handle (and fails with EIO once the lock is
//     lost) instead of being answered from a cached empty file.
const openFlags = fuse.FOPEN_NOFLUSH | fuse.FOPEN_DIRECT_IO

// lockNode is the file M/NAME, M/.try/NAME or M/.timeout/SECS/NAME. Its
// fields are set at creation and never change.
type lockNode struct {
	fs.Inode
	fsys   *filesystem
	name   string // the lock name
	policy policy // how Open waits
}

// Setattr accepts and ignores every change (truncate from O_TRUNC or
// ftruncate, chmod, utimes) and reports the unchanged attributes: the file
// is always empty.
func (n *lockNode) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.fsys.fileAttr(&out.Attr)
	return 0
}

// Statfs reports NAME_MAX.
func (n *lockNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	statfs(out)
	return 0
}

// modeFor is the lock mode an open(2) with flags asks for: read-only opens
// are shared, every other access mode is exclusive.
func modeFor(flags uint32) lockengine.Mode {
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		return lockengine.Shared
	}
	return lockengine.Exclusive
}

// Open takes the lock, waiting as the node's policy says (O_NONBLOCK makes
// any policy a try). It is the only operation of lockfs that blocks. When
// ctx is cancelled (FUSE_INTERRUPT: the caller got a signal) it returns
// EINTR and holds nothing; a grant that raced with the cancellation is
// returned as a success, and the kernel then sends RELEASE for it.
func (n *lockNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	mode := modeFor(flags)
	if c, ok := fuse.FromContext(ctx); ok {
		// Record who asks, for inspection (the kernel reports pid 0 for
		// callers in another pid namespace).
		ctx = lockengine.WithOwner(ctx, lockengine.Owner{UID: c.Uid, GID: c.Gid, PID: c.Pid})
	}
	lease, err := n.fsys.acquire(ctx, n.name, mode, n.policy, flags&syscall.O_NONBLOCK != 0)
	if err == nil && lease == nil {
		err = fmt.Errorf("lock %q: engine returned neither lease nor error", n.name)
	}
	if err != nil {
		if lease != nil {
			_ = lease.Release()
		}
		return nil, 0, n.fsys.fail("open", n.name, mode, err)
	}
	if n.fsys.log.Enabled(context.Background(), slog.LevelDebug) {
		n.fsys.log.Debug("lock granted", "lock", n.name, "mode", mode.String(), "token", lease.Token())
	}
	return &handle{fsys: n.fsys, lease: lease}, openFlags, 0
}

// acquire asks the engine for name in mode, waiting according to p.
func (f *filesystem) acquire(ctx context.Context, name string, mode lockengine.Mode, p policy, nonblock bool) (*lockengine.Lease, error) {
	if nonblock || p.kind == waitTry {
		return f.eng.TryAcquire(ctx, name, mode)
	}
	// Try first: an open that finds the name held (typically because it
	// overtook the asynchronous RELEASE of the previous holder's close)
	// is recorded as parked, so that the Release that frees the name
	// lets it run at once (see handle.Release).
	if lease, err := f.eng.TryAcquire(ctx, name, mode); err == nil || !errors.Is(err, lockengine.ErrWouldBlock) {
		return lease, err
	}
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

// handle is one open file description of a lock file: it owns one lease
// from Open until Release.
type handle struct {
	fsys  *filesystem
	lease *lockengine.Lease
	// released is set by the first Release; a second one is a bug.
	released atomic.Bool
	// rec caches the holder record returned by Read.
	rec atomic.Pointer[[]byte]
	// lossLogged is set once the loss of the lease has been logged at
	// warn level, so a client looping on EIO does not flood the log.
	lossLogged atomic.Bool
}

// check returns 0 while the lease is held and EIO (logging op) once it has
// ended (lost, or the engine closed).
func (h *handle) check(op string) syscall.Errno {
	err := h.lease.Err()
	if err == nil {
		return 0
	}
	lvl := slog.LevelDebug
	if h.lossLogged.CompareAndSwap(false, true) {
		lvl = slog.LevelWarn
	}
	h.fsys.log.Log(context.Background(), lvl, op+" failed: lock no longer held", "lock", h.lease.Name(),
		"mode", h.lease.Mode().String(), "token", h.lease.Token(), "err", err)
	return Errno(err)
}

// Read returns the holder record (see Record) while the lock is held and
// EIO once it is lost.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := h.check("read"); e != 0 {
		return nil, e
	}
	rec := h.record()
	if off < 0 || off >= int64(len(rec)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(int64(len(rec)), off+int64(len(dest)))
	return fuse.ReadResultData(rec[off:end]), 0
}

// record returns the handle's holder record, formatting it on first use.
func (h *handle) record() []byte {
	if r := h.rec.Load(); r != nil {
		return *r
	}
	r := Record(h.lease.Name(), h.lease.Mode(), h.lease.Token(), h.lease.Owner(), h.lease.Granted())
	h.rec.Store(&r)
	return r
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

// Release gives the lock back. The kernel sends it once, when the last
// descriptor of the open file description is closed (or its holder dies).
// It must stay fast: RELEASE counts against the kernel's max_background.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.released.Swap(true) {
		h.fsys.log.Error("bug: lock file handle released twice", "lock", h.lease.Name(),
			"mode", h.lease.Mode().String(), "token", h.lease.Token())
		return 0
	}
	if err := h.lease.Release(); err != nil {
		h.fsys.fail("release", h.lease.Name(), h.lease.Mode(), err)
	}
	if h.fsys.log.Enabled(context.Background(), slog.LevelDebug) {
		h.fsys.log.Debug("lock released", "lock", h.lease.Name(), "mode", h.lease.Mode().String(),
			"token", h.lease.Token())
	}
	if h.fsys.hasParked(h.lease.Name()) {
		// The release has just made a waiting open runnable. Let it
		// run (and answer its OPEN) before this goroutine goes back to
		// read(2) on /dev/fuse: with GOMAXPROCS=1 it would otherwise
		// wait for the runtime's sysmon to take the P back (~100 us).
		runtime.Gosched()
	}
	return 0
}
