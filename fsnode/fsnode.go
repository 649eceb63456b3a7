// Package fsnode is the lockfs filesystem: go-fuse nodes that turn open(2)
// and the lock calls (flock(2), fcntl(2) record locks, lockf(3)) on lock
// files into locks, and the last close(2) of an open file description into
// their release. It holds no lock logic of its own; every decision is made
// by a [lockengine.Engine]. It is the only package of lockfs that imports
// go-fuse.
//
// Layout of a mount M:
//
//	M/NAME               a blocking open for writing waits for the exclusive lock
//	M/.shared/NAME       open waits for the shared lock
//	M/.try/NAME          open fails at once with EAGAIN if NAME is not free
//	M/.timeout/SECS/NAME open waits at most SECS, then fails with EAGAIN
//	M/.flock/NAME        open takes nothing; only lock calls lock
//
// A read-only open and any O_NONBLOCK open of M/NAME take nothing, so that
// lock tools that open first and lock second (flock(1), setlock, chpst)
// behave as on a local disk; under .try and .timeout a read-only open takes
// the shared lock, any other the exclusive one, and O_NONBLOCK makes every
// form that locks a try. All forms and all lock calls lock the same name
// (see lockcalls.go for who owns a lock taken by a call). Lookup never
// blocks and succeeds for every valid name; only Open and blocking lock
// calls wait. A signal to a waiting caller ends the wait with EINTR. A lock
// taken by an open or by flock(2) is released on FUSE RELEASE, i.e. when
// the last descriptor of the open file description is closed (dup and fork
// keep it). Writes are accepted and discarded; reads return the holder
// record of the descriptor's lock (the fencing token alone on the first
// line, see [Record]); once the lock is lost, read, write and fsync on its
// descriptor fail with EIO.
//
// Inspection never takes or waits for a lock: stat(2) of a lock file shows
// the first holder's uid and gid as owner and the grant time as mtime
// (attributes of lock files are not cached by the kernel), and the extended
// attributes user.lockfs.* (see [XattrToken] and the others) describe the
// holders, waiters and state. unlink(2) of a lock file breaks the lock
// (lockengine.Engine.Break): root, or a uid that owns every current lease
// of the name (else EPERM), ENOENT
// when nobody holds it here.
package fsnode

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// FSType is the filesystem type a lockfs mount shows in /proc/self/mountinfo.
const FSType = "fuse.lockfs"

// cacheTimeout is the entry timeout, and the attribute timeout of
// directories, handed to the kernel. Names always exist and directories
// never change, so the kernel may cache them for as long as it likes; a
// lookup per open would cost a FUSE round trip.
const cacheTimeout = time.Hour

// lockAttrTimeout is the attribute timeout of lock files: zero, because
// their owner and times show the current holder (ls -l, stat). open(2)
// and close(2) do not ask for attributes (no default_permissions), so
// this costs nothing on the locking path; each stat costs a GETATTR.
const lockAttrTimeout = 0

// Options configures Mount. The zero value mounts without allow_other
// through fusermount3 and discards logs.
type Options struct {
	// Logger receives one record per failed operation (keys lock, mode,
	// err) and lifecycle messages. Nil discards.
	Logger *slog.Logger
	// AllowOther lets every user (and container) on the machine use the
	// mount. Non-root mounts need user_allow_other in /etc/fuse.conf.
	AllowOther bool
	// DirectMount mounts with mount(2) instead of fusermount3 (needs
	// root / CAP_SYS_ADMIN). There is no fallback to fusermount3.
	DirectMount bool
	// DebugFUSE writes go-fuse's per-request debug trace to DebugLog (or
	// stderr when nil).
	DebugFUSE bool
	// DebugLog is where the go-fuse debug trace goes; nil means stderr.
	DebugLog *log.Logger
	// Limits are the per-user limits (see Limits); the zero value limits
	// nothing.
	Limits Limits
	// NameSweep is how often the entries of idle names are invalidated so
	// that the kernel forgets their inodes (see sweep.go): zero means
	// DefaultNameSweep, negative never.
	NameSweep time.Duration
}

// Server is a mounted lockfs filesystem.
type Server struct {
	srv        *fuse.Server
	mountpoint string
	fsys       *filesystem
}

// Mount mounts a lockfs filesystem backed by eng at mountpoint (an existing
// directory) and serves it in background goroutines. It returns once the
// kernel has initialised the mount, i.e. once mountpoint shows in
// /proc/self/mountinfo with type FSType. The caller keeps ownership of eng
// and must close it only after the mount is gone or detached.
func Mount(mountpoint string, eng lockengine.Engine, opts Options) (*Server, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	var lim *limiter
	if opts.Limits != (Limits{}) {
		lim = newLimiter(opts.Limits, lg)
	}
	root := newRoot(eng, lg, lim)
	timeout := cacheTimeout
	lockTimeout := time.Duration(lockAttrTimeout)
	debugLog := opts.DebugLog
	if debugLog == nil {
		debugLog = log.New(os.Stderr, "fuse: ", log.Lmicroseconds)
	}
	fo := &fs.Options{
		// Every valid name exists and no attribute ever changes, so
		// the kernel may keep entries and attributes: an open then
		// costs OPEN and RELEASE only, no LOOKUP or GETATTR. Directory
		// listings are not cached (no FOPEN_CACHE_DIR), so ls always
		// shows the current names.
		EntryTimeout: &timeout,
		// Directories set their own (long) attribute timeout; lock
		// files use this one.
		AttrTimeout:    &lockTimeout,
		Logger:         slog.NewLogLogger(lg.Handler(), slog.LevelWarn),
		RootStableAttr: &fs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
		MountOptions: fuse.MountOptions{
			FsName:     "lockfs",
			Name:       "lockfs",
			AllowOther: opts.AllowOther,
			// Extended attributes are on for user.lockfs.*. The
			// kernel then asks for security.capability on every
			// O_TRUNC open; Getxattr answers it with ENODATA at once.
			DisableXAttrs: false,
			// O_TRUNC arrives in OPEN instead of as an extra SETATTR.
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			// RELEASE is a background request; keep the kernel from
			// queueing them behind a burst (e.g. many holders killed
			// at once).
			MaxBackground: 64,
			// flock(2) and fcntl locks come to the daemon (Setlk,
			// Setlkw, Getlk) instead of staying in this kernel.
			EnableLocks: true,
			// Reads answer with ReadResultData, which go-fuse still
			// routes through its splice pool: each concurrent READ
			// took a pipe pair the pool kept, so the daemon's
			// descriptors grew with the highest read concurrency seen
			// (measured in a soak: +8 pipes in 90 s; none with this).
			DisableSplice:     true,
			DirectMountStrict: opts.DirectMount,
			Debug:             opts.DebugFUSE,
			Logger:            debugLog,
		},
	}
	if !opts.DebugFUSE {
		// Non-debug messages of the fuse package (panics, protocol
		// oddities) go to slog at error level.
		fo.MountOptions.Logger = slog.NewLogLogger(lg.Handler(), slog.LevelError)
	}
	// Not fs.Mount: its WaitMount opens a file in the new mount from this
	// process (go-fuse's epoll workaround for daemons that use their own
	// mount). A daemon killed during that open hangs in D state for good,
	// since the thread waiting for the answer keeps /dev/fuse open. lockfs
	// never opens its own files, so it does not need the workaround; the
	// mount is usable once NewServer returns (requests sent before INIT
	// is answered wait for it).
	raw := &rawFS{RawFileSystem: fs.NewNodeFS(root, fo), fsys: root.fsys}
	srv, err := fuse.NewServer(raw, mountpoint, &fo.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	go srv.Serve()
	sweep := opts.NameSweep
	if sweep == 0 {
		sweep = DefaultNameSweep
	}
	if sweep > 0 {
		sw := &sweeper{root: root, stop: make(chan struct{})}
		go sw.run(sweep)
		go func() {
			srv.Wait()
			close(sw.stop)
		}()
	}
	return &Server{srv: srv, mountpoint: mountpoint, fsys: root.fsys}, nil
}

// Unmount unmounts the filesystem and waits for the serve loops to end. It
// fails with an error wrapping syscall.EBUSY while lock files are still
// open (or openers still wait); the mount then stays fully served, and the
// caller may detach it lazily (umount -l) instead.
func (s *Server) Unmount() error {
	err := s.srv.Unmount()
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, syscall.EBUSY) && strings.Contains(strings.ToLower(err.Error()), "busy"):
		// fusermount3 reports EBUSY only as text.
		return fmt.Errorf("unmount %s: %w: %v", s.mountpoint, syscall.EBUSY, err)
	}
	return fmt.Errorf("unmount %s: %w", s.mountpoint, err)
}

// Wait blocks until the mount is gone: unmounted by Unmount or from outside
// (umount, fusermount3 -u), or, after a lazy unmount, until the last open
// descriptor of the mount is closed.
func (s *Server) Wait() { s.srv.Wait() }
