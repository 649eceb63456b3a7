package fsnode

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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
	uid   uint32
	gid   uint32
	start time.Time // reported as atime, mtime and ctime of every node

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
	// inodes counts the lock-file nodes not yet forgotten (see
	// lockNode.OnForget and sweep.go).
	inodes atomic.Int64
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

// fileAttr fills the attributes of a lock file: an empty regular file that
// everybody may open.
func (f *filesystem) fileAttr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o666
	a.Nlink = 1
	a.Size = 0
	a.Blocks = 0
	f.setTimes(a)
}

// dirAttr fills the attributes of a directory with permission bits perm.
// Callers also set the long attribute timeout of directories.
func (f *filesystem) dirAttr(a *fuse.Attr, perm uint32) {
	a.Mode = syscall.S_IFDIR | perm
	a.Nlink = 2
	a.Size = 0
	f.setTimes(a)
}

// Permission bits of the directories. The root is writable by everybody:
// everybody may lock any name. (The mount runs without default_permissions;
// the bits are informational, lockfs grants every open.) It has no sticky
// bit: with one, the kernel would refuse an unlink by the cached owner of
// the lock file (its first holder) before the daemon sees it; without one,
// whether an rm breaks the lock is the daemon's decision alone (see
// lockDir.Unlink).
const (
	rootPerm     = 0o777
	reservedPerm = 0o555
)

func newRoot(eng lockengine.Engine, lg *slog.Logger, lim *limiter) *lockDir {
	fsys := &filesystem{
		eng:   eng,
		log:   lg,
		uid:   uint32(os.Getuid()),
		gid:   uint32(os.Getgid()),
		start: time.Now(),
		lim:   lim,
	}
	return &lockDir{dirBase: dirBase{fsys: fsys}, root: true, perm: rootPerm}
}

// dirBase gives every directory the operations that lockfs refuses (EPERM)
// and statfs.
type dirBase struct {
	fsys *filesystem
}

var errNotPermitted = fmt.Errorf("lockfs has only lock files: %w", syscall.EPERM)

// Mkdir refuses: EPERM.
func (d *dirBase) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, d.fsys.fail("mkdir", name, 0, errNotPermitted)
}

// Rmdir refuses: EPERM.
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
// dentry, and lookups of valid names are always positive, so this is
// reached only through a bug; it must never block (a blocked CREATE holds
// the directory's lock).
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

// lockDir is a directory whose entries are lock files: the root (policy
// block), .try (try), .timeout/SECS (timeout), .shared (block, shared) and
// .flock (none).
type lockDir struct {
	fs.Inode
	dirBase
	policy policy
	perm   uint32
	root   bool
	// reserved maps the reserved names of the root to their directories;
	// set once in OnAdd of the root, read-only afterwards.
	reserved map[string]*fs.Inode
}

// OnAdd creates the reserved directories under the root.
func (d *lockDir) OnAdd(ctx context.Context) {
	if !d.root {
		return
	}
	views := []struct {
		name string
		ino  uint64
		node fs.InodeEmbedder
	}{
		{TryDir, tryDirIno, &lockDir{dirBase: d.dirBase, policy: policy{kind: waitTry}, perm: reservedPerm}},
		{TimeoutDir, timeoutDirIno, &timeoutDir{dirBase: d.dirBase}},
		{SharedDir, sharedDirIno, &lockDir{dirBase: d.dirBase, policy: policy{kind: waitBlock, shared: true}, perm: reservedPerm}},
		{FlockDir, flockDirIno, &lockDir{dirBase: d.dirBase, policy: policy{kind: waitNone}, perm: reservedPerm}},
	}
	d.reserved = make(map[string]*fs.Inode, len(views))
	for _, v := range views {
		ch := d.NewPersistentInode(ctx, v.node, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: v.ino})
		d.reserved[v.name] = ch
		d.AddChild(v.name, ch, true)
	}
}

// Getattr reports a directory.
func (d *lockDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fsys.dirAttr(&out.Attr, d.perm)
	out.SetTimeout(cacheTimeout)
	return 0
}

// Lookup never blocks and succeeds for every valid lock name, returning the
// same inode for a name as long as the kernel remembers it. It counts the
// name against the caller's names limit, and fails with ENOLCK past it (see
// limits.go); the count ends when the kernel forgets the inode.
func (d *lockDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if ch := d.reserved[name]; ch != nil {
		d.fsys.dirAttr(&out.Attr, reservedPerm)
		out.SetAttrTimeout(cacheTimeout)
		return ch, 0
	}
	if err := validLockName(name); err != nil {
		return nil, d.fsys.fail("lookup", name, 0, err)
	}
	ch := d.GetChild(name)
	var n *lockNode
	if ch != nil {
		n, _ = ch.Operations().(*lockNode)
	}
	created := n == nil
	if created {
		n = &lockNode{fsys: d.fsys, name: name, policy: d.policy}
		ch = d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG})
		d.fsys.inodes.Add(1)
	}
	n.used.Store(true)
	if err := d.fsys.lim.chargeName(ctx, n); err != nil {
		if created {
			// Never handed to the kernel, so never forgotten.
			n.OnForget()
		}
		return nil, Errno(err)
	}
	d.fsys.fileAttr(&out.Attr)
	return ch, 0
}

// Readdir lists, in the root, the names held or waited on in the engine, and
// nothing elsewhere. It is computed on every opendir: the kernel does not
// cache directory contents (no FOPEN_CACHE_DIR).
func (d *lockDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if !d.root {
		return fs.NewListDirStream(nil), 0
	}
	infos := d.fsys.eng.Snapshot()
	list := make([]fuse.DirEntry, 0, len(infos))
	for _, info := range infos {
		e := fuse.DirEntry{Name: info.Name, Mode: syscall.S_IFREG}
		// A name opened through the root has a live inode: report its
		// number. Otherwise leave it unknown; lookup assigns one.
		if ch := d.GetChild(info.Name); ch != nil {
			e.Ino = ch.StableAttr().Ino
		}
		list = append(list, e)
	}
	return fs.NewListDirStream(list), 0
}

// timeoutDir is .timeout: its entries are directories named by a timeout.
type timeoutDir struct {
	fs.Inode
	dirBase
}

// Getattr reports a read-only directory.
func (d *timeoutDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fsys.dirAttr(&out.Attr, reservedPerm)
	out.SetTimeout(cacheTimeout)
	return 0
}

// Lookup parses name as a timeout (see ParseTimeout) and returns the
// directory of lock files that wait at most that long.
func (d *timeoutDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	timeout, err := ParseTimeout(name)
	if err != nil {
		return nil, d.fsys.fail("lookup", TimeoutDir+"/"+name, 0, err)
	}
	ch := d.GetChild(name)
	if ch == nil {
		ch = d.NewInode(ctx,
			&lockDir{dirBase: d.dirBase, policy: timeoutPolicy(timeout), perm: reservedPerm},
			fs.StableAttr{Mode: syscall.S_IFDIR})
	}
	d.fsys.dirAttr(&out.Attr, reservedPerm)
	out.SetAttrTimeout(cacheTimeout)
	return ch, 0
}

// Readdir lists nothing: any timeout can be looked up.
func (d *timeoutDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream(nil), 0
}
