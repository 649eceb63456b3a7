package fsnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock calls: the mount forwards flock(2), fcntl(2) record locks
// (F_SETLK, F_SETLKW, F_GETLK, F_OFD_*) and lockf(3) to the daemon, so the
// kernel keeps no lock of its own and every call takes, converts or
// releases the name's one lock in the engine, across daemons and hosts.
//
// Who owns a lock, as on a local filesystem:
//
//   - flock(2) locks belong to the open file description (the handle):
//     shared by dup and fork, released by LOCK_UN or the last close.
//   - POSIX locks (fcntl, lockf) belong to the process (the kernel's lock
//     owner): released by F_UNLCK, or when the process closes any
//     descriptor of the name (FLUSH) or exits. OFD locks carry the open
//     file description as owner and so behave like flock locks.
//
// One descriptor never waits for itself: a lock call through a descriptor
// acts on the lock that descriptor already holds (its open's, or an
// earlier call's, of either kind), so the same or a weaker mode succeeds at
// once, an unlock releases it and a later call takes it again. Byte ranges
// are ignored: every record lock locks the whole name.
//
// Every call that takes or converts a lock needs write permission on the
// name's directory, checked against the calling process's credentials at
// the time of the call (mayLock): a descriptor that root opened and
// passed to another user does not let that user lock. Unlocks and F_GETLK
// need nothing.

// posixKey names the POSIX lock of one lock owner (a process) on one name.
type posixKey struct {
	name  string
	owner uint64
}

// posixLock is a POSIX lock taken through a descriptor that held nothing.
type posixLock struct {
	slot *lockengine.Slot
	via  *handle // the descriptor of the first call, released with it
}

var (
	_ fs.FileGetlker  = (*handle)(nil)
	_ fs.FileSetlker  = (*handle)(nil)
	_ fs.FileSetlkwer = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
)

// lockMode maps an F_RDLCK or F_WRLCK lock type to a mode; ok is false for
// anything else (F_UNLCK included).
func lockMode(typ uint32) (lockengine.Mode, bool) {
	switch typ {
	case syscall.F_RDLCK:
		return lockengine.Shared, true
	case syscall.F_WRLCK:
		return lockengine.Exclusive, true
	}
	return 0, false
}

// viaOf is the interface a lock call with FUSE lk_flags used.
func viaOf(flags uint32) lockengine.Via {
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		return lockengine.ViaFlock
	}
	return lockengine.ViaPOSIX
}

// Setlk serves flock(LOCK_NB) and F_SETLK: take, convert or release without
// waiting; EAGAIN (EWOULDBLOCK) when the lock cannot be granted at once.
func (h *handle) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setlk(ctx, owner, lk, flags, false)
}

// Setlkw serves a blocking flock(2) and F_SETLKW: it waits in the name's
// FIFO queue until granted. A signal to the caller (FUSE_INTERRUPT) ends
// the wait with EINTR and leaves nothing queued; the kernel restarts the
// call when the signal handler asked for SA_RESTART.
func (h *handle) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setlk(ctx, owner, lk, flags, true)
}

func (h *handle) setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	via := viaOf(flags)
	if lk.Typ == syscall.F_UNLCK {
		slot := h.slotFor(owner, via, false)
		if slot == nil {
			return 0
		}
		err := slot.Unlock(ctx)
		h.fsys.lim.settle(slot, 0, false)
		if err != nil {
			return h.fsys.fail(via.String()+" unlock", h.name, 0, err)
		}
		h.fsys.yieldToParked(h.name)
		return 0
	}
	mode, ok := lockMode(lk.Typ)
	if !ok {
		return h.fsys.fail(via.String(), h.name, 0,
			fmt.Errorf("lock %q: lock type %d: %w", h.name, lk.Typ, lockengine.ErrInvalidMode))
	}
	// The caller's permission now, not the opener's: a descriptor may
	// have been passed on (see tree.go).
	if err := h.fsys.mayLock(ctx, h.name); err != nil {
		return h.fsys.fail(via.String(), h.name, mode, err)
	}
	slot := h.slotFor(owner, via, true)
	// A call that may take a new lease counts against the caller's held
	// limit (a conversion of a lease the slot holds does not), and one
	// that waits against its waiting limit: past either it fails at once
	// with ENOLCK (see limits.go).
	var uid uint32
	var reserved bool
	if h.fsys.lim != nil && !h.fsys.lim.isCharged(slot) {
		var err error
		if uid, reserved, err = h.fsys.lim.reserveHeld(ctx); err != nil {
			return Errno(err)
		}
	}
	defer func() { h.fsys.lim.settle(slot, uid, reserved) }()
	lctx := ctx
	ctx = withOwner(ctx, via)
	var err error
	if via == lockengine.ViaPOSIX {
		// A failed F_SETLK leaves the process's lock as it was.
		err = slot.TryLockKeep(ctx, mode)
	} else {
		err = slot.Lock(ctx, mode, false)
	}
	if wait && errors.Is(err, lockengine.ErrWouldBlock) {
		endWait, werr := h.fsys.lim.beginWait(lctx)
		if werr != nil {
			return Errno(werr)
		}
		// Parked like a waiting open, so that the RELEASE that frees
		// the name lets this call run at once (see handle.Release).
		unpark := h.fsys.park(h.name)
		err = slot.Lock(ctx, mode, true)
		unpark()
		endWait()
	}
	if err != nil {
		return h.fsys.fail(via.String(), h.name, mode, err)
	}
	if h.fsys.log.Enabled(context.Background(), slog.LevelDebug) {
		if l := slot.Lease(); l != nil {
			h.fsys.log.Debug("lock granted", "lock", h.name, "mode", mode.String(), "token", l.Token(), "via", via.String())
		}
	}
	return 0
}

// slotFor returns the slot a lock call of owner through h acts on:
//
//   - flock: the descriptor's own slot; when that is empty but a POSIX
//     lock taken through this descriptor is held, that one.
//   - POSIX: the owner's POSIX lock on the name if it holds a lease; else
//     the descriptor's own slot when it holds a lease; else the owner's
//     (empty) POSIX lock entry, or a new one (only when create is set; nil
//     otherwise). An entry emptied by F_UNLCK stays in the table, and must
//     not shadow the descriptor's lease: the call would then wait for (or
//     fail with EAGAIN against) the lock its own descriptor holds.
func (h *handle) slotFor(owner uint64, via lockengine.Via, create bool) *lockengine.Slot {
	f := h.fsys
	if via == lockengine.ViaFlock {
		if h.slot.Lease() == nil {
			if l := f.posixVia(h); l != nil {
				return l.slot
			}
		}
		return h.slot
	}
	key := posixKey{name: h.name, owner: owner}
	f.posixMu.Lock()
	defer f.posixMu.Unlock()
	pl := f.posix[key]
	if pl != nil && pl.slot.Lease() != nil {
		return pl.slot
	}
	if h.slot.Lease() != nil {
		return h.slot
	}
	if pl != nil {
		return pl.slot
	}
	if !create {
		return nil
	}
	pl = &posixLock{slot: lockengine.NewSlot(f.eng, h.name, nil), via: h}
	if f.posix == nil {
		f.posix = make(map[posixKey]*posixLock)
		f.posixByVia = make(map[*handle][]posixKey)
	}
	f.posix[key] = pl
	f.posixByVia[h] = append(f.posixByVia[h], key)
	return pl.slot
}

// posixVia returns a POSIX lock taken through h that holds a lease, or nil.
func (f *filesystem) posixVia(h *handle) *posixLock {
	f.posixMu.Lock()
	defer f.posixMu.Unlock()
	for _, key := range f.posixByVia[h] {
		if pl := f.posix[key]; pl != nil && pl.slot.Lease() != nil {
			return pl
		}
	}
	return nil
}

// posixLeaseVia returns the lease of a POSIX lock taken through h, or nil.
func (f *filesystem) posixLeaseVia(h *handle) *lockengine.Lease {
	if pl := f.posixVia(h); pl != nil {
		return pl.slot.Lease()
	}
	return nil
}

// dropPosix releases owner's POSIX lock on name, if any.
func (f *filesystem) dropPosix(name string, owner uint64) {
	key := posixKey{name: name, owner: owner}
	f.posixMu.Lock()
	pl := f.posix[key]
	if pl != nil {
		delete(f.posix, key)
		f.unlinkVia(pl.via, key)
	}
	f.posixMu.Unlock()
	if pl != nil {
		if err := pl.slot.Close(); err != nil {
			f.fail("posix unlock", name, 0, err)
		}
		f.lim.uncharge(pl.slot)
	}
}

// dropPosixVia releases the POSIX locks taken through h (its last close:
// the processes that took them closed it, or died, without a FLUSH that
// released them).
func (f *filesystem) dropPosixVia(h *handle) {
	f.posixMu.Lock()
	keys := f.posixByVia[h]
	if keys == nil {
		f.posixMu.Unlock()
		return
	}
	delete(f.posixByVia, h)
	var pls []*posixLock
	for _, key := range keys {
		if pl := f.posix[key]; pl != nil && pl.via == h {
			delete(f.posix, key)
			pls = append(pls, pl)
		}
	}
	f.posixMu.Unlock()
	for _, pl := range pls {
		if err := pl.slot.Close(); err != nil {
			f.fail("posix unlock", h.name, 0, err)
		}
		f.lim.uncharge(pl.slot)
	}
}

// unlinkVia removes key from via's list. Called with posixMu held.
func (f *filesystem) unlinkVia(via *handle, key posixKey) {
	keys := f.posixByVia[via]
	for i, k := range keys {
		if k == key {
			keys = append(keys[:i], keys[i+1:]...)
			break
		}
	}
	if len(keys) == 0 {
		delete(f.posixByVia, via)
	} else {
		f.posixByVia[via] = keys
	}
}

// Flush runs on every close(2) of a descriptor opened without a lock (a
// descriptor whose open took the lock has FOPEN_NOFLUSH): the closing
// process's POSIX lock on the name is released, as POSIX says.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if owner, ok := h.fsys.flushOwner(ctx); ok {
		h.fsys.dropPosix(h.name, owner)
	}
	return 0
}

// Getlk serves F_GETLK: it reports a lock that conflicts with the one
// described, held through this daemon by another owner, as a whole-file
// lock with the pid of one holder as the daemon sees it (0 when the holder
// is not visible from its pid namespace); F_UNLCK otherwise. Holders
// through other daemons are not reported: finding them would mean taking
// the lock for a moment, which could make another process's try-lock fail.
func (h *handle) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	mode, ok := lockMode(lk.Typ)
	if !ok {
		return h.fsys.fail("getlk", h.name, 0,
			fmt.Errorf("lock %q: lock type %d: %w", h.name, lk.Typ, lockengine.ErrInvalidMode))
	}
	*out = fuse.FileLock{Typ: syscall.F_UNLCK}
	var own *lockengine.Lease
	if slot := h.slotFor(owner, viaOf(flags), false); slot != nil {
		own = slot.Lease()
	}
	info, held := h.fsys.eng.Inspect(h.name)
	if !held || info.State != lockengine.StateHeld {
		return 0
	}
	for _, l := range info.Leases {
		if l.Lost || (own != nil && l.Token == own.Token() && l.Owner == own.Owner() && l.Granted.Equal(own.Granted())) {
			continue
		}
		if mode == lockengine.Exclusive || l.Mode == lockengine.Exclusive {
			conflict(out, l.Mode, l.Owner.PID)
			return 0
		}
	}
	return 0
}

// conflict fills out with a whole-file lock in mode held by pid.
func conflict(out *fuse.FileLock, mode lockengine.Mode, pid uint32) {
	out.Typ = syscall.F_WRLCK
	if mode == lockengine.Shared {
		out.Typ = syscall.F_RDLCK
	}
	out.Start, out.End, out.Pid = 0, math.MaxInt64, pid
}
