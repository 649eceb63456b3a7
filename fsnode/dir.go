package fsnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// Fixed inode numbers of the reserved directories. Automatic inode numbers
// (lock files, .timeout/SECS) start at 2^63, so these never collide.
const (
	tryDirIno     = 2
	timeoutDirIno = 3
	sharedDirIno  = 4
	flockDirIno   = 5
)

// filesystem is the state shared by every node of one mount.
type filesystem struct {
	eng   lockengine.Engine
	log   *slog.Logger
	uid   uint32    // the daemon's; owner of the reserved directories
	gid   uint32    // the daemon's
	start time.Time // reported as atime, mtime and ctime where nothing better is known

	// root is the root node; nil in tests that build nodes directly.
	root *lockDir
	// rootAttr are the attributes of the root directory (Options.Root).
	rootAttr lockengine.DirAttr
	// attrTimeout is how long the kernel, and attrs, keep the attributes
	// of lock directories and lock files (Options.AttrTimeout).
	attrTimeout time.Duration
	// attrs caches the attributes of lock directories (see tree.go).
	attrMu sync.Mutex
	attrs  map[string]dirAttrCache // guarded by attrMu
	// attrGen counts the changes made through this daemon (storeAttr,
	// forgetAttr); a lookup that read attributes from the backend caches
	// them only if none happened meanwhile. Guarded by attrMu.
	attrGen uint64

	// parked counts, per lock name, the opens waiting in Acquire (see
	// handle.Release).
	parkedMu sync.Mutex
	parked   map[string]int

	// POSIX locks taken through descriptors that held nothing (see
	// lockcalls.go), by owner and by the descriptor they came through.
	posixMu    sync.Mutex
	posix      map[posixKey]*posixLock // guarded by posixMu
	posixByVia map[*handle][]posixKey  // guarded by posixMu

	// flushOwners holds the lock owner of each FLUSH in progress, keyed
	// by the request's cancel channel (see rawFS.Flush).
	flushOwners sync.Map

	// lim enforces the per-user limits (see limits.go); nil: none.
	lim *limiter
	// inodes counts the lock-file and lock-directory nodes not yet
	// forgotten (see lockNode.OnForget, lockDir.OnForget and sweep.go).
	inodes atomic.Int64
	// procWarned is when procWarn last logged (Unix nanoseconds; 0: never).
	procWarned atomic.Int64
}

// park records an open of name that is about to wait; the returned
// function undoes it.
func (f *filesystem) park(name string) func() {
	f.parkedMu.Lock()
	if f.parked == nil {
		f.parked = make(map[string]int)
	}
	f.parked[name]++
	f.parkedMu.Unlock()
	return func() {
		f.parkedMu.Lock()
		if f.parked[name]--; f.parked[name] <= 0 {
			delete(f.parked, name)
		}
		f.parkedMu.Unlock()
	}
}

// hasParked reports whether an open of name is waiting.
func (f *filesystem) hasParked(name string) bool {
	f.parkedMu.Lock()
	defer f.parkedMu.Unlock()
	return f.parked[name] > 0
}

func (f *filesystem) setTimes(a *fuse.Attr) {
	a.SetTimes(&f.start, &f.start, &f.start)
	a.Uid, a.Gid = f.uid, f.gid
	a.Blksize = 4096
}

// fileAttr fills the attributes of a lock file in a directory with
// attributes dir: an empty regular file with the directory's owner and
// group and the read and write bits of its mode, so that the kernel asks
// for write permission on the directory of a name before it lets a write
// open lock it.
func (f *filesystem) fileAttr(a *fuse.Attr, dir lockengine.DirAttr) {
	a.Mode = syscall.S_IFREG | dir.Mode&0o666
	a.Nlink = 1
	a.Size = 0
	a.Blocks = 0
	f.setTimes(a)
	a.Uid, a.Gid = dir.UID, dir.GID
}

// fillDirAttr fills the attributes of a directory with the attributes
// dir. Callers also set the attribute timeout.
func (f *filesystem) fillDirAttr(a *fuse.Attr, dir lockengine.DirAttr) {
	a.Mode = syscall.S_IFDIR | dir.Mode&0o7777
	a.Nlink = 2
	a.Size = 0
	f.setTimes(a)
	a.Uid, a.Gid = dir.UID, dir.GID
	if !dir.Mtime.IsZero() {
		a.SetTimes(nil, &dir.Mtime, &dir.Mtime)
	}
}

// Permission bits of the directories. The root is by default writable by
// everybody (everybody may lock a top-level name) and has no sticky bit:
// with one, the kernel would let only the owner of a lock file (the
// root's owner) unlink it; without one, whether an rm breaks the lock is
// the daemon's decision (see lockDir.Unlink). The reserved directories
// (.try, .timeout, .shared, .flock and .timeout/SECS) may be searched and
// listed by everybody; what is below them has the attributes of the lock
// directory it shows.
const (
	DefaultRootMode = 0o777
	reservedPerm    = 0o555
)

// newRoot returns the root node of a mount of eng. root are the root
// directory's attributes (Options.Root; nil: DefaultRootMode, owned by the
// daemon's user), attrTimeout the attribute timeout of lock directories
// and lock files.
func newRoot(eng lockengine.Engine, lg *slog.Logger, lim *limiter, root *lockengine.DirAttr, attrTimeout time.Duration) *lockDir {
	fsys := &filesystem{
		eng:         eng,
		log:         lg,
		uid:         uint32(os.Getuid()),
		gid:         uint32(os.Getgid()),
		start:       time.Now(),
		lim:         lim,
		attrTimeout: attrTimeout,
	}
	fsys.rootAttr = lockengine.DirAttr{UID: fsys.uid, GID: fsys.gid, Mode: DefaultRootMode}
	if root != nil {
		fsys.rootAttr = *root
		fsys.rootAttr.Mode &= 0o7777
	}
	fsys.root = &lockDir{dirBase: dirBase{fsys: fsys}, root: true}
	return fsys.root
}

// dirBase gives every directory the operations that lockfs refuses (EPERM)
// and statfs.
type dirBase struct {
	fsys *filesystem
}

var errNotPermitted = fmt.Errorf("lockfs has only lock files and lock directories: %w", syscall.EPERM)

// Mkdir refuses: EPERM (lock directories override it).
func (d *dirBase) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, d.fsys.fail("mkdir", name, 0, errNotPermitted)
}

// Rmdir refuses: EPERM (lock directories override it).
func (d *dirBase) Rmdir(ctx context.Context, name string) syscall.Errno {
	return d.fsys.fail("rmdir", name, 0, errNotPermitted)
}

// Unlink refuses: EPERM (the entries of .timeout are directories; lock
// directories override it with a lock break, see lockDir.Unlink).
func (d *dirBase) Unlink(ctx context.Context, name string) syscall.Errno {
	return d.fsys.fail("unlink", name, 0, errNotPermitted)
}

// Rename refuses: EPERM.
func (d *dirBase) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return d.fsys.fail("rename", name, 0, errNotPermitted)
}

// Link refuses: EPERM.
func (d *dirBase) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, d.fsys.fail("link", name, 0, errNotPermitted)
}

// Symlink refuses: EPERM.
func (d *dirBase) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, d.fsys.fail("symlink", name, 0, errNotPermitted)
}

// Mknod refuses: EPERM.
func (d *dirBase) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, d.fsys.fail("mknod", name, 0, errNotPermitted)
}

// Create refuses: EPERM. The kernel sends CREATE only for a negative
// dentry, and lookups of valid names are negative only for mkdir(2), so
// this is reached only through a bug; it must never block (a blocked
// CREATE holds the directory's lock).
func (d *dirBase) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, d.fsys.fail("create", name, 0, errNotPermitted)
}

// Statfs reports NAME_MAX and otherwise an empty filesystem.
func (d *dirBase) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	statfs(out)
	return 0
}

func statfs(out *fuse.StatfsOut) {
	*out = fuse.StatfsOut{Bsize: 4096, Frsize: 4096, NameLen: lockengine.MaxNameLen}
}

// lockDir is a directory whose entries are lock files and lock
// directories: the root, a lock directory made with mkdir (any depth), a
// reserved view (.try, .shared, .flock, .timeout/SECS) and the mirror of
// a lock directory under a view (M/.try/team is team with the .try
// policy). Its fields are set at creation and never change.
type lockDir struct {
	fs.Inode
	dirBase
	// policy is how opens of the lock files below take their lock.
	policy policy
	// path is the lock directory the node shows ("" is the root).
	path string
	// root: the mount's root directory.
	root bool
	// view: a reserved view or a directory below one. Views list
	// nothing and refuse mkdir, rmdir and attribute changes.
	view bool
	// viewRoot: the reserved directory itself (.try, .shared, .flock,
	// .timeout/SECS), with fixed attributes.
	viewRoot bool
	// reserved maps the reserved names of the root to their directories;
	// set once in OnAdd of the root, read-only afterwards.
	reserved map[string]*fs.Inode

	// counted: when the sweep may ask the kernel to forget the node (see
	// sweep.go). The root and its reserved directories are persistent.
	counted
}

var _ fs.NodeOnForgetter = (*lockDir)(nil)

// OnForget runs when the kernel has forgotten the directory's inode: it no
// longer counts against the names limit of the uids that looked it up.
func (d *lockDir) OnForget() { d.fsys.forgetNode(d) }

// OnAdd creates the reserved directories under the root.
func (d *lockDir) OnAdd(ctx context.Context) {
	if !d.root {
		return
	}
	views := []struct {
		name string
		ino  uint64
	}{{TryDir, tryDirIno}, {TimeoutDir, timeoutDirIno}, {SharedDir, sharedDirIno}, {FlockDir, flockDirIno}}
	d.reserved = make(map[string]*fs.Inode, len(views))
	for _, v := range views {
		ch := d.NewPersistentInode(ctx, d.newView(v.name), fs.StableAttr{Mode: syscall.S_IFDIR, Ino: v.ino})
		d.reserved[v.name] = ch
		d.AddChild(v.name, ch, true)
	}
}

// newView returns the node of reserved directory name (TryDir,
// TimeoutDir, SharedDir or FlockDir) of lock directory d: M/.try in the
// root, M/team/.try in lock directory team, which shows the same locks as
// M/.try/team, so that a process that sees only team (a container with
// M/team bind-mounted) can use the views too.
func (d *lockDir) newView(name string) countedNode {
	view := func(p policy) *lockDir {
		return &lockDir{dirBase: d.dirBase, policy: p, path: d.path, view: true, viewRoot: true}
	}
	switch name {
	case TryDir:
		return view(policy{kind: waitTry})
	case TimeoutDir:
		return &timeoutDir{dirBase: d.dirBase, path: d.path}
	case SharedDir:
		return view(policy{kind: waitBlock, shared: true})
	case FlockDir:
		return view(policy{kind: waitNone})
	}
	panic("fsnode: no view " + name)
}

// lookupView returns the reserved directory name of lock directory d (not
// the root, whose views are persistent), reusing the child the kernel
// knows. It counts against the caller's names limit like a lock
// directory.
func (d *lockDir) lookupView(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := d.GetChild(name)
	created := ch == nil
	if created {
		ch = d.fsys.newNode(ctx, d.EmbeddedInode(), d.newView(name), syscall.S_IFDIR)
	}
	if errno := d.fsys.useNode(ctx, ch.Operations().(countedNode), created); errno != 0 {
		return nil, errno
	}
	d.fsys.fillDirAttr(&out.Attr, d.fsys.reservedAttr())
	out.SetAttrTimeout(cacheTimeout)
	out.SetEntryTimeout(cacheTimeout)
	return ch, 0
}

// reservedAttr are the attributes of the reserved directories.
func (f *filesystem) reservedAttr() lockengine.DirAttr {
	return lockengine.DirAttr{UID: f.uid, GID: f.gid, Mode: reservedPerm}
}

// attr returns the attributes the directory reports and how long the
// kernel may keep them.
func (d *lockDir) attr(ctx context.Context) (lockengine.DirAttr, time.Duration, error) {
	switch {
	case d.viewRoot:
		return d.fsys.reservedAttr(), cacheTimeout, nil
	case d.path == "":
		// Not kept long although they never change: a stat of the
		// mountpoint should reach the daemon, and fail with ENOTCONN
		// once it is gone, soon.
		return d.fsys.rootAttr, d.fsys.attrTimeout, nil
	}
	a, err := d.fsys.dirAttr(ctx, d.path)
	return a, d.fsys.attrTimeout, err
}

// Getattr reports the directory's owner, group and mode: those of the
// lock directory it shows (ENOENT once that is gone), fixed ones for the
// root and the reserved directories.
func (d *lockDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a, timeout, err := d.attr(metadataCtx(ctx))
	if err != nil {
		return d.fsys.fail("getattr", dirLabel(d.path), 0, err)
	}
	d.fsys.fillDirAttr(&out.Attr, a)
	out.SetTimeout(timeout)
	return 0
}

// Lookup never blocks: it answers from the engine, with bounded I/O. In
// the root a reserved name is its reserved directory. A lock directory
// (engine StatDir) is a directory. Any other valid name is a lock file,
// with the same inode as long as the kernel remembers it, except when
// the caller is in mkdir(2) and nothing holds or waits for the name here:
// then ENOENT, so that the kernel lets the mkdir reach Mkdir (see
// callerInMkdir). A lock file's lookup counts the name against the
// caller's names limit, and fails with ENOLCK past it (see limits.go);
// the count ends when the kernel forgets the inode. A name in a lock
// directory that no longer exists is ENOENT. The kernel keeps entries and
// attributes for the attribute timeout: then it asks again, so that a
// name made a lock directory (or a directory removed) through another
// daemon shows within it; an open costs a LOOKUP at most once per timeout.
func (d *lockDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ctx = metadataCtx(ctx)
	if d.root {
		if ch := d.reserved[name]; ch != nil {
			d.fsys.fillDirAttr(&out.Attr, d.fsys.reservedAttr())
			out.SetAttrTimeout(cacheTimeout)
			out.SetEntryTimeout(cacheTimeout)
			return ch, 0
		}
	} else if !d.view && IsReserved(name) {
		return d.lookupView(ctx, name, out)
	}
	if err := validLockName(name); err != nil {
		return nil, d.fsys.fail("lookup", lockengine.JoinName(d.path, name), 0, err)
	}
	full := lockengine.JoinName(d.path, name)
	// A name held or waited on here is a lock, never a directory: no
	// backend round trip.
	if _, held := d.fsys.eng.Inspect(full); !held {
		a, err := d.fsys.dirAttr(ctx, full)
		switch {
		case err == nil:
			return d.lookupDir(ctx, name, full, a, out)
		case !errors.Is(err, lockengine.ErrNoDir):
			return nil, d.fsys.fail("lookup", full, 0, err)
		case !d.view && d.fsys.callerInMkdir(ctx, full):
			return nil, syscall.ENOENT
		}
	}
	return d.lookupLock(ctx, name, full, out)
}

// lookupDir returns the node of lock directory full (named name here)
// with attributes a, reusing the child the kernel knows. A node counts
// against the caller's names limit like a lock file's (ENOLCK past it).
func (d *lockDir) lookupDir(ctx context.Context, name, full string, a lockengine.DirAttr, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := d.GetChild(name)
	if ch != nil {
		if sub, ok := ch.Operations().(*lockDir); !ok || sub.path != full {
			ch = nil
		}
	}
	created := ch == nil
	if created {
		ch = d.fsys.newNode(ctx, d.EmbeddedInode(),
			&lockDir{dirBase: d.dirBase, policy: d.policy, path: full, view: d.view}, syscall.S_IFDIR)
	}
	if errno := d.fsys.useNode(ctx, ch.Operations().(countedNode), created); errno != 0 {
		return nil, errno
	}
	d.fsys.fillDirAttr(&out.Attr, a)
	out.SetAttrTimeout(d.fsys.attrTimeout)
	out.SetEntryTimeout(d.fsys.attrTimeout)
	return ch, 0
}

// lookupLock returns the lock file of name full (named name here).
func (d *lockDir) lookupLock(ctx context.Context, name, full string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	// The lock files show the directory's attributes (a view's: those of
	// the directory it is of).
	a, err := d.fsys.dirAttr(ctx, d.path)
	if err != nil {
		return nil, d.fsys.fail("lookup", full, 0, err)
	}
	ch := d.GetChild(name)
	var n *lockNode
	if ch != nil {
		n, _ = ch.Operations().(*lockNode)
	}
	created := n == nil
	if created {
		n = &lockNode{fsys: d.fsys, name: full, policy: d.policy}
		ch = d.fsys.newNode(ctx, d.EmbeddedInode(), n, syscall.S_IFREG)
	}
	if errno := d.fsys.useNode(ctx, n, created); errno != 0 {
		return nil, errno
	}
	d.fsys.fileAttr(&out.Attr, a)
	// Not longer than the attribute timeout: another daemon may make the
	// name a lock directory.
	out.SetAttrTimeout(d.fsys.attrTimeout)
	out.SetEntryTimeout(d.fsys.attrTimeout)
	return ch, 0
}

// Readdir lists, in the root and in lock directories, the subdirectories
// and the names held or waited on in the engine directly in the
// directory; the views list nothing. It is computed on every opendir: the
// kernel does not cache directory contents (no FOPEN_CACHE_DIR).
func (d *lockDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if d.view {
		return fs.NewListDirStream(nil), 0
	}
	subs, err := d.fsys.eng.ReadDir(metadataCtx(ctx), d.path)
	if err != nil {
		return nil, d.fsys.fail("readdir", dirLabel(d.path), 0, err)
	}
	infos := d.fsys.eng.Snapshot()
	list := make([]fuse.DirEntry, 0, len(subs)+len(infos))
	for _, s := range subs {
		list = append(list, fuse.DirEntry{Name: s, Mode: syscall.S_IFDIR})
	}
	for _, info := range infos {
		if dir, base := lockengine.SplitName(info.Name); dir == d.path {
			list = append(list, fuse.DirEntry{Name: base, Mode: syscall.S_IFREG})
		}
	}
	slices.SortFunc(list, func(a, b fuse.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	for i := range list {
		// A name the kernel knows has a live inode: report its
		// number. Otherwise leave it unknown; lookup assigns one.
		if ch := d.GetChild(list[i].Name); ch != nil && ch.StableAttr().Mode == list[i].Mode {
			list[i].Ino = ch.StableAttr().Ino
		}
	}
	return fs.NewListDirStream(list), 0
}

// metadataCtx is the context of the engine calls of the operations that
// read or change lock directories (lookup, getattr, readdir, mkdir,
// rmdir, chmod, chown): ctx without its cancellation, which go-fuse
// delivers when the caller gets a signal (FUSE_INTERRUPT). A signal does
// not interrupt these calls on a local filesystem, and programs do not
// retry them on EINTR (mkdir(1) does not, nor does Go's os.Remove): the
// lookup that mkdir(2) makes of a new name through the etcd backend
// failed mkdir with EINTR when the caller got a signal meanwhile. Only
// waits for a lock are interruptible; the backends bound each of these
// calls by their own timeouts.
func metadataCtx(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// Mkdir makes lock directory name here (not under a view): owned by the
// caller, with the mode the kernel passes (the request's, umask applied);
// in a set-group-ID directory it gets the directory's group and the
// set-group-ID bit. The kernel has checked write and search permission
// here. Past the caller's directories limit: EDQUOT. A name held or
// waited on: EEXIST. Another daemon's directory of the same name:
// EEXIST.
func (d *lockDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	full := lockengine.JoinName(d.path, name)
	if d.view {
		return nil, d.fsys.fail("mkdir", full, 0, errNotPermitted)
	}
	if err := validLockName(name); err != nil {
		return nil, d.fsys.fail("mkdir", full, 0, err)
	}
	parent, _, err := d.attr(metadataCtx(ctx))
	if err != nil {
		return nil, d.fsys.fail("mkdir", full, 0, err)
	}
	a := lockengine.DirAttr{UID: d.fsys.uid, GID: d.fsys.gid, Mode: mode & 0o7777, Mtime: time.Now()}
	if c, ok := fuse.FromContext(ctx); ok {
		a.UID, a.GID = c.Uid, c.Gid
	}
	if parent.Mode&syscall.S_ISGID != 0 {
		a.GID = parent.GID
		a.Mode |= syscall.S_ISGID
	}
	charged, err := d.fsys.lim.chargeDir(ctx, a.UID)
	if err != nil {
		return nil, Errno(err) // logged by the limiter, rate-limited
	}
	if err := d.fsys.eng.Mkdir(metadataCtx(ctx), full, a); err != nil {
		if charged {
			d.fsys.lim.unchargeDir(a.UID)
		}
		return nil, d.fsys.fail("mkdir", full, 0, err)
	}
	d.fsys.storeAttr(full, a)
	if d.fsys.root != nil {
		d.fsys.root.invalidateMirrors(d.path, name)
	}
	d.fsys.log.Info("lock directory made", append([]any{"dir", full, "uid", a.UID, "gid", a.GID,
		"mode", fmt.Sprintf("%#o", a.Mode)}, callerArgs(ctx)...)...)
	ch := d.fsys.newNode(ctx, d.EmbeddedInode(), &lockDir{dirBase: d.dirBase, policy: d.policy, path: full}, syscall.S_IFDIR)
	d.fsys.fillDirAttr(&out.Attr, a)
	out.SetAttrTimeout(d.fsys.attrTimeout)
	out.SetEntryTimeout(d.fsys.attrTimeout)
	return ch, 0
}

// Rmdir removes lock directory name (not under a view). The kernel has
// checked write and search permission here (and the sticky bit).
// ENOTEMPTY while it has subdirectories or names held or waited on below
// it, through any daemon of the backend; ENOENT when it does not exist.
// The owner's directories limit gets the directory back.
//
// In the root, which everybody may write and which has no sticky bit (see
// DefaultRootMode), the daemon applies the sticky bit's rule to
// directories itself: only root, the directory's owner or the root's
// owner may remove one (EPERM otherwise). Without it, any user could
// remove another's idle top-level directory, make it again and own it.
func (d *lockDir) Rmdir(ctx context.Context, name string) syscall.Errno {
	full := lockengine.JoinName(d.path, name)
	if d.view || d.reserved[name] != nil {
		return d.fsys.fail("rmdir", full, 0, errNotPermitted)
	}
	if err := validLockName(name); err != nil {
		return d.fsys.fail("rmdir", full, 0, err)
	}
	mctx := metadataCtx(ctx)
	a, aerr := d.fsys.eng.StatDir(mctx, full)
	if d.path == "" {
		if aerr != nil {
			return d.fsys.fail("rmdir", full, 0, aerr)
		}
		if err := d.fsys.mayRemoveTop(ctx, a); err != nil {
			return d.fsys.fail("rmdir", full, 0, fmt.Errorf("lock directory %q: %w", full, err))
		}
	}
	if err := d.fsys.eng.Rmdir(mctx, full); err != nil {
		return d.fsys.fail("rmdir", full, 0, err)
	}
	d.fsys.forgetAttr(full)
	if aerr == nil {
		d.fsys.lim.unchargeDir(a.UID)
	}
	if d.fsys.root != nil {
		d.fsys.root.invalidateMirrors(d.path, name)
	}
	d.fsys.log.Info("lock directory removed", append([]any{"dir", full}, callerArgs(ctx)...)...)
	return 0
}

// mayRemoveTop checks that the caller of ctx may remove the top-level
// lock directory with attributes a: root, a's owner or the root's owner
// may; anybody else gets an error wrapping EPERM.
func (f *filesystem) mayRemoveTop(ctx context.Context, a lockengine.DirAttr) error {
	uid, ok := callerUID(ctx)
	if !ok {
		uid = f.uid // a call from inside the daemon or a test
	}
	if uid == 0 || uid == a.UID || uid == f.rootAttr.UID {
		return nil
	}
	return fmt.Errorf("uid %d may not remove it from the root (root, its owner uid %d or the root's owner uid %d may): %w",
		uid, a.UID, f.rootAttr.UID, syscall.EPERM)
}

// callerArgs are the log attributes naming the caller of ctx (by_uid,
// by_pid); none when ctx has no caller.
func callerArgs(ctx context.Context) []any {
	if c, ok := fuse.FromContext(ctx); ok {
		return []any{"by_uid", c.Uid, "by_pid", c.Pid}
	}
	return nil
}

// Setattr serves chmod, chown and chgrp of a lock directory, with the
// rules of any filesystem (the kernel checks them too, default
// permissions): the mode by root or the owner (the set-group-ID bit is
// dropped when a non-root owner is not in the directory's group), the
// owner by root only (or to itself), the group by root or by the owner to
// a group it is in. Anything else: EPERM. Times and sizes are ignored.
// The root's and the views' attributes cannot be changed (EPERM); the
// root's come from lockfs mount --root-mode and --root-owner.
func (d *lockDir) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	const change = fuse.FATTR_MODE | fuse.FATTR_UID | fuse.FATTR_GID
	if in.Valid&change != 0 && (d.view || d.path == "") {
		what := "the root's attributes are fixed (lockfs mount --root-mode, --root-owner)"
		if d.view {
			what = "a view's attributes are fixed (change those of the lock directory it shows)"
		}
		return d.fsys.fail("setattr", dirLabel(d.path), 0, fmt.Errorf("%s: %w", what, syscall.EPERM))
	}
	if in.Valid&change == 0 {
		return d.Getattr(ctx, f, out)
	}
	mctx := metadataCtx(ctx)
	old, err := d.fsys.eng.StatDir(mctx, d.path)
	if err != nil {
		return d.fsys.fail("setattr", d.path, 0, err)
	}
	a, err := chattr(ctx, old, in)
	if err != nil {
		return d.fsys.fail("setattr", d.path, 0, fmt.Errorf("lock directory %q: %w", d.path, err))
	}
	if a != old {
		if err := d.fsys.eng.SetDirAttr(mctx, d.path, a); err != nil {
			return d.fsys.fail("setattr", d.path, 0, err)
		}
		if a.UID != old.UID {
			d.fsys.lim.moveDir(old.UID, a.UID)
		}
		a.Mtime = time.Now()
		d.fsys.storeAttr(d.path, a)
		d.fsys.log.Info("lock directory attributes set", append([]any{"dir", d.path, "uid", a.UID, "gid", a.GID,
			"mode", fmt.Sprintf("%#o", a.Mode)}, callerArgs(ctx)...)...)
		if d.fsys.root != nil {
			d.fsys.root.invalidateDir(d.path)
		}
	}
	d.fsys.fillDirAttr(&out.Attr, a)
	out.SetTimeout(d.fsys.attrTimeout)
	return 0
}

// chattr applies the mode, owner and group changes of in to a on behalf
// of the caller of ctx, or refuses with an error wrapping EPERM.
func chattr(ctx context.Context, a lockengine.DirAttr, in *fuse.SetAttrIn) (lockengine.DirAttr, error) {
	var c fuse.Caller
	if fc, ok := fuse.FromContext(ctx); ok {
		c = *fc
	}
	root, owner := c.Uid == 0, c.Uid == a.UID
	if in.Valid&fuse.FATTR_UID != 0 && in.Uid != a.UID {
		if !root {
			return a, fmt.Errorf("uid %d may not give it to uid %d (only root may): %w", c.Uid, in.Uid, syscall.EPERM)
		}
		a.UID = in.Uid
	}
	if in.Valid&fuse.FATTR_GID != 0 && in.Gid != a.GID {
		if !root && !(owner && inGroup(&c, in.Gid)) {
			return a, fmt.Errorf("uid %d may not give it to group %d (root, or its owner in that group): %w",
				c.Uid, in.Gid, syscall.EPERM)
		}
		a.GID = in.Gid
	}
	if in.Valid&fuse.FATTR_MODE != 0 {
		if !root && !owner {
			return a, fmt.Errorf("uid %d may not change its mode (root or its owner, uid %d): %w", c.Uid, a.UID, syscall.EPERM)
		}
		a.Mode = in.Mode & 0o7777
		if !root && a.Mode&syscall.S_ISGID != 0 && !inGroup(&c, a.GID) {
			a.Mode &^= syscall.S_ISGID
		}
	}
	return a, nil
}

// timeoutDir is .timeout (of the root, or of lock directory path): its
// entries are directories named by a timeout.
type timeoutDir struct {
	fs.Inode
	dirBase
	path    string
	counted // as in lockDir (the root's .timeout is persistent)
}

var _ fs.NodeOnForgetter = (*timeoutDir)(nil)

// OnForget runs when the kernel has forgotten a lock directory's .timeout.
func (d *timeoutDir) OnForget() { d.fsys.forgetNode(d) }

// Getattr reports a read-only directory.
func (d *timeoutDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fsys.fillDirAttr(&out.Attr, d.fsys.reservedAttr())
	out.SetTimeout(cacheTimeout)
	return 0
}

// Lookup parses name as a timeout (see ParseTimeout) and returns the
// directory of lock files (and mirrored lock directories) that wait at
// most that long.
func (d *timeoutDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	timeout, err := ParseTimeout(name)
	if err != nil {
		return nil, d.fsys.fail("lookup", TimeoutDir+"/"+name, 0, err)
	}
	ch := d.GetChild(name)
	created := ch == nil
	if created {
		ch = d.fsys.newNode(ctx, d.EmbeddedInode(),
			&lockDir{dirBase: d.dirBase, policy: timeoutPolicy(timeout), path: d.path, view: true, viewRoot: true},
			syscall.S_IFDIR)
	}
	// Each spelling is a node of its own (.timeout/1, .timeout/1.0, ...):
	// counted against the caller's names limit, and forgotten by the
	// sweep once idle, so spellings cannot exhaust the daemon's memory.
	if errno := d.fsys.useNode(ctx, ch.Operations().(countedNode), created); errno != 0 {
		return nil, errno
	}
	d.fsys.fillDirAttr(&out.Attr, d.fsys.reservedAttr())
	out.SetAttrTimeout(cacheTimeout)
	out.SetEntryTimeout(cacheTimeout)
	return ch, 0
}

// Readdir lists nothing: any timeout can be looked up.
func (d *timeoutDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream(nil), 0
}
