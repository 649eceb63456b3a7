// Package dirlock is the lockengine.Backend of one host: each lock name is
// a file in a local backing directory, held with flock(2), so processes
// (and containers) that share the directory on one kernel exclude each
// other; lock directories are real directories there (see tree.go). A heartbeat refreshes and verifies every held lock file and
// reports a lock lost when its file is removed or replaced; an optional
// takeover replaces the file of a holder that stopped refreshing it; a
// sweeper removes unused files. See docs/design.md for the invariants.
package dirlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock/internal/heartbeat"
)

// Options configures a Backend. The zero value is usable.
type Options struct {
	// Heartbeat is how often a held lock file is refreshed and verified
	// (default heartbeat.DefaultInterval, 10s). A lock whose file is
	// removed or replaced is reported lost within one interval.
	Heartbeat time.Duration
	// TakeoverAfter, when non-zero, lets a waiter take a name from a holder
	// whose flock is still held but whose lock file has not been refreshed
	// for this long (measured on the waiter's monotonic clock). It must be at
	// least 3*Heartbeat, and every daemon sharing the directory must use a
	// heartbeat no longer than TakeoverAfter/3. Zero (the default) never
	// takes a name from a live holder, however long it is stuck.
	TakeoverAfter time.Duration
	// PollMin and PollMax bound the backoff of the one poller per name that
	// waits while another process holds it when the kernel cannot wake it
	// (no inotify; defaults 50µs and 2ms).
	PollMin, PollMax time.Duration
	// WakePoll is how often a waiter that the kernel wakes on releases
	// (see wake.go) still tries, for holders that do not announce their
	// releases: other programs locking the state directory's files, or a
	// lockfs without wake-ups (default 100ms).
	WakePoll time.Duration
	// GuardWait bounds the wait for the guard file (default 1s). Past it an
	// attempt counts as would-block and is retried.
	GuardWait time.Duration
	// IdleTTL: lock files unused for this long are removed by the sweeper
	// (default 1m).
	IdleTTL time.Duration
	// SweepInterval is how often unused lock files are removed (default
	// 1m); negative disables sweeping.
	SweepInterval time.Duration
	// IdleFiles is how many unlocked descriptors are kept open for quick
	// re-acquisition (default 1024).
	IdleFiles int
	// AllowRemote permits a backing directory on a network filesystem
	// (NFS, SMB, ...), where flock(2) does not exclude other clients.
	AllowRemote bool
	// Logger receives warnings and errors; nil discards them.
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Heartbeat <= 0 {
		o.Heartbeat = heartbeat.DefaultInterval
	}
	if o.TakeoverAfter < 0 {
		return errors.New("lockengine: TakeoverAfter must not be negative")
	}
	if o.TakeoverAfter > 0 && o.TakeoverAfter < 3*o.Heartbeat {
		return fmt.Errorf("lockengine: TakeoverAfter %v must be at least 3x the heartbeat %v", o.TakeoverAfter, o.Heartbeat)
	}
	if o.PollMin <= 0 {
		o.PollMin = 50 * time.Microsecond
	}
	if o.PollMax <= 0 {
		o.PollMax = 2 * time.Millisecond
	}
	o.PollMax = max(o.PollMax, o.PollMin)
	if o.WakePoll <= 0 {
		o.WakePoll = 100 * time.Millisecond
	}
	if o.GuardWait <= 0 {
		o.GuardWait = time.Second
	}
	if o.IdleTTL <= 0 {
		o.IdleTTL = time.Minute
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.IdleFiles <= 0 {
		o.IdleFiles = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Backend is the local Backend: each name is a file in a backing
// directory, held with flock(2). Processes (and containers) that share the
// directory on one kernel exclude each other. See docs/design.md for the
// invariants.
//
// Layout of the directory: locks/NAME (one lock file per name, holding a
// one-line record with the name's fencing token; a nested name's file is
// in the lock directories of its path, locks/DIR/.../NAME, which are real
// directories: see tree.go), guard (never unlinked; holds the token
// floor), tmp/ (files being installed by a takeover, directories being
// made by Mkdir).
//
// The directory must be on a local filesystem: flock(2) on NFS or SMB does
// not exclude other clients reliably, and attribute caching defeats the
// inode checks. Open refuses such filesystems unless AllowRemote is set.
type Backend struct {
	dir     string
	locksFd int // O_DIRECTORY descriptor of dir/locks
	tmpFd   int // O_DIRECTORY descriptor of dir/tmp
	guard   guard
	hb      *heartbeat.Loop
	opts    Options
	log     *slog.Logger

	mu     sync.Mutex
	idle   map[string]lockFile // guarded by mu; unlocked descriptors kept for reuse
	holds  map[string]*hold    // guarded by mu; outstanding holds by name
	closed bool                // guarded by mu

	// holdsPeak is holds' largest length since it was last shrunk
	// (mapshrink); guarded by mu.
	holdsPeak int

	// Whether some backend on this directory may take over locks: the
	// marker file "takeover" exists. Sticky once seen. See takeoverMarker.
	started   time.Time    // base of the monotonic clock readings below
	armed     atomic.Bool  // the marker was seen
	checkedAt atomic.Int64 // when the marker was last looked for, ns since started
	dirFd     int          // O_DIRECTORY descriptor of dir

	// openat2 works here: nested paths are opened in one call (see
	// openBelow).
	openat2 bool

	// The epoch of this Open and its tokens' lower bound, epoch<<32:
	// every token handed out is at least base. See epoch.go.
	epoch, base uint64

	tightened int // permission fixes logged by this Open; see ownAndTighten

	wake wakeState // kernel wake-ups of waiters, see wake.go

	stopSweep chan struct{}
	sweepDone chan struct{}
}

var (
	_ lockengine.Backend = (*Backend)(nil)
	_ lockengine.Tree    = (*Backend)(nil)
)

// Open opens (creating if needed) the backing directory dir.
func Open(dir string, opts Options) (*Backend, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("lockengine: state dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("lockengine: state dir: %w", err)
	}
	typ, err := fsType(dir)
	if err != nil {
		return nil, fmt.Errorf("lockengine: state dir %s: statfs: %w", dir, err)
	}
	if name, ok := remoteFS[typ]; ok {
		if !opts.AllowRemote {
			return nil, fmt.Errorf("%w: %s is on %s; use a local directory", lockengine.ErrRemoteFS, dir, name)
		}
		opts.Logger.Warn("backing directory is on a network filesystem; locks may not exclude other clients",
			"dir", dir, "fs", name)
	} else if typ == mountinfo.FUSESuperMagic {
		opts.Logger.Warn("backing directory is on a FUSE filesystem; flock exclusion depends on it",
			"dir", dir)
	}

	b := &Backend{
		dir:       dir,
		locksFd:   -1,
		tmpFd:     -1,
		guard:     guard{fd: -1, wait: opts.GuardWait},
		opts:      opts,
		log:       opts.Logger,
		idle:      make(map[string]lockFile),
		holds:     make(map[string]*hold),
		started:   time.Now(),
		dirFd:     -1,
		stopSweep: make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	fail := func(err error) (*Backend, error) {
		b.closeFds()
		return nil, fmt.Errorf("lockengine: state dir %s: %w", dir, err)
	}
	if b.dirFd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return fail(fmt.Errorf("open: %w", err))
	}
	// Nothing is created in a directory that another user owns.
	if err := b.secureDir(b.dirFd, dir); err != nil {
		return fail(err)
	}
	if b.locksFd, err = openSubdir(b.dirFd, "locks"); err != nil {
		return fail(err)
	}
	b.openat2 = probeOpenat2(b.locksFd)
	if b.tmpFd, err = openSubdir(b.dirFd, "tmp"); err != nil {
		return fail(err)
	}
	if b.guard.fd, _, err = openStateFile(b.dirFd, dir, "guard", unix.O_RDWR|unix.O_CREAT, filePerm); err != nil {
		return fail(fmt.Errorf("guard: %w", err))
	}
	if err := b.secureStateDir(); err != nil {
		return fail(err)
	}
	if opts.TakeoverAfter > 0 {
		// Arm the guard for every backend on this directory before this
		// one can take anything over: see takeoverMarker.
		fd, _, err := openStateFile(b.dirFd, dir, takeoverMarker, unix.O_RDONLY|unix.O_CREAT, filePerm)
		if err != nil {
			return fail(fmt.Errorf("takeover marker: %w", err))
		}
		closeFd(fd)
	}
	epoch, err := b.startEpoch()
	if err != nil {
		return fail(err)
	}
	b.epoch = epoch
	b.base = epoch << epochShift
	b.refreshArmed()
	b.hb = heartbeat.New(opts.Heartbeat)
	if opts.SweepInterval > 0 {
		go b.sweepLoop()
	} else {
		close(b.sweepDone)
	}
	return b, nil
}

// openSubdir creates (0700) if missing and opens the subdirectory name of
// the directory open as dirfd, without following a symlink.
func openSubdir(dirfd int, name string) (int, error) {
	if err := unix.Mkdirat(dirfd, name, dirPerm); err != nil && err != unix.EEXIST {
		return -1, fmt.Errorf("create %s: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", name, err)
	}
	return fd, nil
}

// Epoch returns the epoch of this Open: every token it hands out is at
// least Epoch()<<32, and a later Open on the directory has a larger epoch.
func (b *Backend) Epoch() uint64 { return b.epoch }

// HeartbeatFailures returns how many heartbeat refreshes or verifications
// have failed since Open.
func (b *Backend) HeartbeatFailures() uint64 { return b.hb.Failures() }

// Dir returns the absolute path of the backing directory.
func (b *Backend) Dir() string { return b.dir }

// TryLock implements Backend.
func (b *Backend) TryLock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	if err := lockengine.ValidateName(name); err != nil {
		return nil, err
	}
	// A replaced file is retried with a fresh descriptor; a few rounds
	// suffice unless files are being replaced continuously.
	for range 8 {
		lf, err := b.openFile(name)
		if err != nil {
			return nil, err
		}
		tok, err := b.tryFile(name, lf, mode, false)
		switch {
		case err == nil:
			return b.newHold(name, lf, mode, tok, lost), nil
		case errors.Is(err, errReplaced):
			closeFd(lf.fd)
			continue
		case errors.Is(err, lockengine.ErrWouldBlock):
			b.putIdle(name, lf)
			return nil, fmt.Errorf("lock %q: %w", name, err)
		default:
			closeFd(lf.fd)
			return nil, err
		}
	}
	return nil, fmt.Errorf("lock %q: %w: lock file keeps being replaced", name, lockengine.ErrWouldBlock)
}

// Lock implements Backend. While another process holds the name it waits
// for the kernel to report a release (see wake.go), trying again every
// WakePoll meanwhile; without kernel wake-ups it polls with exponential
// backoff between PollMin and PollMax.
func (b *Backend) Lock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	if err := lockengine.ValidateName(name); err != nil {
		return nil, err
	}
	lf, err := b.openFile(name)
	if err != nil {
		return nil, err
	}
	var (
		delay = b.opts.PollMin
		timer *time.Timer
		stale staleWatch
		ww    *waitWake // this call's mark and watch on lf, once it waits
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		tok, err := b.tryFile(name, lf, mode, true)
		switch {
		case err == nil:
			ww.disarm()
			return b.newHold(name, lf, mode, tok, lost), nil
		case errors.Is(err, errReplaced):
			ww.forget()
			closeFd(lf.fd)
			if lf, err = b.openFile(name); err != nil {
				return nil, err
			}
			delay = b.opts.PollMin
			continue
		case !errors.Is(err, lockengine.ErrWouldBlock):
			ww.forget()
			closeFd(lf.fd)
			return nil, err
		}
		if b.opts.TakeoverAfter > 0 {
			h, err := b.watchStale(&stale, name, lf, mode, lost)
			if h != nil || err != nil {
				ww.forget()
				if h == nil {
					closeFd(lf.fd)
				}
				return h, err
			}
		}
		if !ww.armed(lf.fd) {
			// Announce this waiter and watch the file, then try once
			// more: a release just before the mark was not announced.
			ww = b.armWake(ww, lf)
			continue
		}
		wait := delay
		if ww.woken {
			wait = b.opts.WakePoll
			if b.opts.TakeoverAfter > 0 {
				wait = min(wait, b.opts.TakeoverAfter/16)
			}
			if b.wake.yielded(name) {
				// The waiter yielded to may give up without a
				// word: look again when the yield ends.
				wait = min(wait, yieldMax)
			}
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			ww.disarm()
			b.putIdle(name, lf)
			return nil, fmt.Errorf("lock %q: %w", name, ctx.Err())
		case <-ww.c:
			// (Reset discards a pending expiry: Go 1.23 timers.)
		case <-timer.C:
			delay = min(2*delay, b.opts.PollMax)
		}
	}
}

// openFile returns an unlocked descriptor of name's lock file, from the idle
// cache or freshly opened (created if missing). Anything but a regular file
// with one link is refused with ErrNotRegular and left untouched: the open
// uses O_NOFOLLOW and O_NONBLOCK and never truncates.
func (b *Backend) openFile(name string) (lockFile, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return lockFile{}, lockengine.ErrClosed
	}
	lf, ok := b.idle[name]
	if ok {
		delete(b.idle, name)
	}
	b.mu.Unlock()
	if ok {
		return lf, nil
	}
	fd, err := ignoringEINTR2(func() (int, error) {
		// O_NOATIME: the record read of every grant would otherwise
		// update atime (relatime: mtime is always newer) and dirty the
		// inode. Not allowed on other users' files: retry without.
		fd, err := b.openBelow(name,
			unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NOATIME, filePerm)
		if err == unix.EPERM {
			fd, err = b.openBelow(name,
				unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, filePerm)
		}
		return fd, err
	})
	if err != nil {
		nested := strings.Contains(name, "/")
		switch {
		case err == unix.ELOOP:
			return lockFile{}, fmt.Errorf("lock %q: %w: a symlink is at the lock path or in it", name, lockengine.ErrNotRegular)
		case err == unix.EISDIR:
			return lockFile{}, fmt.Errorf("lock %q: %w", name, lockengine.ErrIsDir)
		case err == unix.ENXIO, err == unix.EOPNOTSUPP:
			return lockFile{}, fmt.Errorf("lock %q: %w: a socket or device is at the lock path", name, lockengine.ErrNotRegular)
		case nested && err == unix.ENOENT:
			dir, _ := lockengine.SplitName(name)
			return lockFile{}, fmt.Errorf("lock %q: %w: %q does not exist", name, lockengine.ErrNoDir, dir)
		case nested && err == unix.ENOTDIR:
			dir, _ := lockengine.SplitName(name)
			return lockFile{}, fmt.Errorf("lock %q: %w: %q is not a directory", name, lockengine.ErrNoDir, dir)
		case err == unix.ENOENT:
			return lockFile{}, fmt.Errorf("lock %q: open %s/locks: %w (backing directory removed?)", name, b.dir, err)
		}
		return lockFile{}, fmt.Errorf("lock %q: open %s/locks/%s: %w", name, b.dir, name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		closeFd(fd)
		return lockFile{}, fmt.Errorf("lock %q: fstat: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		closeFd(fd)
		return lockFile{}, fmt.Errorf("lock %q: %w: file type %#o at the lock path", name, lockengine.ErrNotRegular, st.Mode&unix.S_IFMT)
	}
	if st.Nlink > 1 {
		closeFd(fd)
		return lockFile{}, fmt.Errorf("lock %q: %w: the lock file has %d hard links", name, lockengine.ErrNotRegular, st.Nlink)
	}
	return lockFile{fd: fd, dev: st.Dev, ino: st.Ino}, nil
}

// tryFile makes one attempt to lock lf: flock without waiting, then, under
// the guard held shared, verify that the path still names the locked inode
// and write the new record (exclusive) or refresh the file (shared). It
// returns the grant's token. On any failure the flock is dropped; lf stays
// open and is the caller's.
func (b *Backend) tryFile(name string, lf lockFile, mode lockengine.Mode, waitGuard bool) (uint64, error) {
	if b.wake.yielding(name, lf.fd) {
		// Released to another process's waiter a moment ago: its turn.
		return 0, lockengine.ErrWouldBlock
	}
	switch err := flock(lf.fd, flockHow(mode)|unix.LOCK_NB); err {
	case nil:
	case unix.EWOULDBLOCK:
		// Held; but is lf still the file at the path? A descriptor of
		// a replaced or removed file may be held by a stuck holder
		// forever while the name itself is free.
		var st unix.Stat_t
		if err := b.statName(name, &st); err == unix.ENOENT ||
			(err == nil && (st.Dev != lf.dev || st.Ino != lf.ino)) {
			return 0, errReplaced
		}
		return 0, lockengine.ErrWouldBlock
	default:
		return 0, fmt.Errorf("lock %q: flock: %w", name, err)
	}
	tok, err := b.verifyAndRecord(name, lf, mode, waitGuard)
	if err != nil {
		_ = flock(lf.fd, unix.LOCK_UN)
		return 0, err
	}
	return tok, nil
}

func (b *Backend) verifyAndRecord(name string, lf lockFile, mode lockengine.Mode, waitGuard bool) (uint64, error) {
	guarded := b.armed.Load()
	if guarded {
		if err := b.guard.lockShared(waitGuard); err != nil {
			if errors.Is(err, lockengine.ErrWouldBlock) {
				return 0, err
			}
			return 0, fmt.Errorf("lock %q: %w", name, err)
		}
		defer b.guard.unlockShared()
	}
	tok, err := b.verifyAndRecordLocked(name, lf, mode, guarded)
	if err == nil && !guarded && !b.unarmedRecently() {
		// A takeover may have been armed meanwhile: retry, under the
		// guard.
		return 0, errReplaced
	}
	return tok, err
}

func (b *Backend) verifyAndRecordLocked(name string, lf lockFile, mode lockengine.Mode, guarded bool) (uint64, error) {
	var st unix.Stat_t
	switch err := b.statName(name, &st); {
	case err == unix.ENOENT:
		return 0, errReplaced
	case err != nil:
		return 0, fmt.Errorf("lock %q: verify: %w", name, err)
	case st.Dev != lf.dev || st.Ino != lf.ino:
		return 0, errReplaced
	case st.Nlink == 0:
		// Unlinked between the path lookup and the stat (a sweep or a
		// Rmdir removing it under its flock): replaced, retry.
		return 0, errReplaced
	case st.Nlink != 1:
		return 0, fmt.Errorf("lock %q: %w: the lock file has %d hard links", name, lockengine.ErrNotRegular, st.Nlink)
	}
	tok, empty, err := readRecord(lf.fd, tokenPrefix)
	if err != nil {
		return 0, fmt.Errorf("lock %q: %w", name, err)
	}
	if empty {
		// A new file: continue from the highest token of any removed one.
		if tok, err = b.readFloor(guarded); err != nil {
			return 0, fmt.Errorf("lock %q: %w", name, err)
		}
	}
	if mode == lockengine.Exclusive {
		// Never below this Open's epoch base, so a record rolled back
		// by a crash cannot make a token repeat: see epoch.go. Shared
		// grants carry the recorded generation without the base: a
		// shared token above the record would let an older daemon's
		// next exclusive grant (record+1, its own lower base) fall
		// below it.
		if tok, err = nextToken(max(tok, b.base)); err == nil {
			err = writeRecord(lf.fd, tokenPrefix, tok)
		}
	} else {
		err = touch(lf.fd)
	}
	if err != nil {
		return 0, fmt.Errorf("lock %q: %w", name, err)
	}
	return tok, nil
}

// putIdle keeps an unlocked descriptor for the next attempt on name.
func (b *Backend) putIdle(name string, lf lockFile) {
	b.mu.Lock()
	keep := b.keepIdleLocked(name, lf)
	b.mu.Unlock()
	if !keep {
		closeFd(lf.fd)
	}
}

// keepIdleLocked adds lf to the idle cache unless it is full or closed,
// and reports whether it did. Called with b.mu held.
func (b *Backend) keepIdleLocked(name string, lf lockFile) bool {
	if _, dup := b.idle[name]; dup || b.closed || len(b.idle) >= b.opts.IdleFiles {
		return false
	}
	b.idle[name] = lf
	return true
}

// Close implements Backend: it stops the sweeper and the heartbeat, and
// closes every descriptor, which releases every flock still held.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	holds := make([]*hold, 0, len(b.holds))
	for _, h := range b.holds {
		holds = append(holds, h)
	}
	b.mu.Unlock()
	close(b.stopSweep)
	<-b.sweepDone
	for _, h := range holds {
		_ = h.Unlock()
	}
	b.hb.Close()
	b.wake.close()
	b.mu.Lock()
	for name, lf := range b.idle {
		closeFd(lf.fd)
		delete(b.idle, name)
	}
	b.mu.Unlock()
	b.closeFds()
	return nil
}

func (b *Backend) closeFds() {
	closeFd(b.dirFd)
	closeFd(b.locksFd)
	closeFd(b.tmpFd)
	closeFd(b.guard.fd)
}
