// Package fsnode is the lockfs filesystem: go-fuse nodes that turn open(2)
// and the lock calls (flock(2), fcntl(2) record locks, lockf(3)) on lock
// files into locks, and the last close(2) of an open file description into
// their release. It holds no lock logic of its own; every decision is made
// by a [lockengine.Engine]. It is the only package of lockfs that imports
// go-fuse.
//
// Layout of a mount M (NAME is a path: "deploy", "team/app/deploy"):
//
//	M/NAME               a blocking open for writing waits for the exclusive lock
//	M/.shared/NAME       open waits for the shared lock
//	M/.try/NAME          open fails at once with EAGAIN if NAME is not free
//	M/.timeout/SECS/NAME open waits at most SECS, then fails with EAGAIN
//	M/.flock/NAME        open takes nothing; only lock calls lock
//
// Lock directories (M/team, made with mkdir, removed with rmdir when
// nothing below them is held or waited on) hold lock files and further
// lock directories; a name's identity is its full path. Under each view
// (.try, .shared, .flock, .timeout/SECS) the tree is mirrored. The mount
// uses default_permissions: directories have an owner, a group and a mode
// (chmod, chown), a lock file shows its directory's owner and group and
// read and write bits, and taking a lock by any interface needs write
// permission on its directory (see tree.go).
//
// A read-only open and any O_NONBLOCK open of M/NAME take nothing, so that
// lock tools that open first and lock second (flock(1), setlock, chpst)
// behave as on a local disk; under .try and .timeout a read-only open takes
// the shared lock, any other the exclusive one, and O_NONBLOCK makes every
// form that locks a try. All forms and all lock calls lock the same name
// (see lockcalls.go for who owns a lock taken by a call). Lookup never
// blocks and succeeds for every valid name (a lock directory, else a lock
// file; but see callerInMkdir); only Open and blocking lock calls wait. A
// signal to a waiting caller ends the wait with EINTR. A lock
// taken by an open or by flock(2) is released on FUSE RELEASE, i.e. when
// the last descriptor of the open file description is closed (dup and fork
// keep it). Writes are accepted and discarded; reads return the holder
// record of the descriptor's lock (the fencing token alone on the first
// line, see [Record]); once the lock is lost, read, write and fsync on its
// descriptor fail with EIO.
//
// Inspection never takes or waits for a lock: stat(2) of a lock file shows
// the grant time as mtime, and the extended attributes user.lockfs.* (see
// [XattrToken] and the others) describe the holders, waiters and state.
// unlink(2) of a lock file breaks the lock (lockengine.Engine.Break):
// root, or a uid that owns every current lease of the name (else EPERM),
// ENOENT when nobody holds it here.
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

// cacheTimeout is the entry and attribute timeout of the root and the
// reserved directories, which never change.
const cacheTimeout = time.Hour

// DefaultAttrTimeout is the attribute timeout when Options.AttrTimeout is
// zero.
const DefaultAttrTimeout = time.Second

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
	// AttrTimeout is how long the kernel (and the daemon) keep the
	// attributes of lock directories and lock files, and the entries of
	// lock directories: a change of a directory made through another
	// daemon sharing the backend (mkdir, rmdir, chmod, chown) shows
	// through this mount within it. Zero means DefaultAttrTimeout; a
	// negative value means no caching (ask every time).
	AttrTimeout time.Duration
	// Root are the owner, group and mode (07777) of the root directory;
	// nil means DefaultRootMode owned by the daemon's user and group.
	// They are not stored: each mount says them.
	Root *lockengine.DirAttr
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
	attrTimeout := opts.AttrTimeout
	switch {
	case attrTimeout == 0:
		attrTimeout = DefaultAttrTimeout
	case attrTimeout < 0:
		attrTimeout = 0
	}
	root := newRoot(eng, lg, lim, opts.Root, attrTimeout)
	debugLog := opts.DebugLog
	if debugLog == nil {
		debugLog = log.New(os.Stderr, "fuse: ", log.Lmicroseconds)
	}
	fo := &fs.Options{
		// Every node sets its own entry and attribute timeouts (a nil
		// default keeps a zero timeout zero): the reserved directories'
		// are long, lock files' and lock directories' the attribute
		// timeout. Directory listings are not cached (no
		// FOPEN_CACHE_DIR), so ls always shows the current names.
		//
		// A mode of 0 (chmod 000) is reported as it is.
		NullPermissions: true,
		Logger:          slog.NewLogLogger(lg.Handler(), slog.LevelWarn),
		RootStableAttr:  &fs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
		MountOptions: fuse.MountOptions{
			FsName:     "lockfs",
			Name:       "lockfs",
			AllowOther: opts.AllowOther,
			// The kernel checks permissions with the attributes lockfs
			// reports (see tree.go).
			Options: []string{"default_permissions"},
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
