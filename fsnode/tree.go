package fsnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock directories: attributes, permissions and the questions only the
// daemon can answer.
//
// The mount uses default_permissions: the kernel checks every path walk,
// open, mkdir, rmdir, unlink and setattr against the attributes lockfs
// reports. A lock directory reports its owner, group and mode (stored by
// the engine's backend, lockengine.Tree); a lock file reports its
// directory's owner and group and the read and write bits of its mode
// (dirmode&0666), so that a write open needs write permission on the
// directory, as creating a file there would. What the kernel cannot see
// the daemon checks with the caller's credentials at the time of the
// request (mayLock): a read-only open that takes a lock (M/.shared/NAME,
// M/.try/NAME), and every lock call (flock, fcntl, lockf), which may come
// through a descriptor that another user opened.
//
// Attributes are cached here and in the kernel for Options.AttrTimeout, so
// that a change made through another daemon sharing the backend shows
// within it; changes made through this daemon show at once.

// dirAttrCache is a lock directory's attributes and when they were read.
type dirAttrCache struct {
	attr lockengine.DirAttr
	at   time.Time
}

// dirAttr returns the attributes of lock directory path ("" is the root,
// whose attributes come from Options.Root), from the cache when they were
// read less than the attribute timeout ago. ErrNoDir when it does not
// exist.
func (f *filesystem) dirAttr(ctx context.Context, path string) (lockengine.DirAttr, error) {
	if path == "" {
		return f.rootAttr, nil
	}
	f.attrMu.Lock()
	c, ok := f.attrs[path]
	gen := f.attrGen
	f.attrMu.Unlock()
	if ok && time.Since(c.at) < f.attrTimeout {
		return c.attr, nil
	}
	a, err := f.eng.StatDir(ctx, path)
	if err != nil {
		if ok && errors.Is(err, lockengine.ErrNoDir) {
			// Removed through another daemon. (A free lock name,
			// never cached, costs no scan of the cache.)
			f.forgetAttr(path)
		}
		return lockengine.DirAttr{}, err
	}
	f.attrMu.Lock()
	if f.attrGen == gen {
		// Unless this daemon changed a directory meanwhile: a's
		// attributes may be older than the change (a chmod's), and
		// must not replace it in the cache.
		f.putAttrLocked(path, a)
	}
	f.attrMu.Unlock()
	return a, nil
}

// storeAttr caches a as the attributes of lock directory path, which this
// daemon just made or changed.
func (f *filesystem) storeAttr(path string, a lockengine.DirAttr) {
	f.attrMu.Lock()
	f.attrGen++
	f.putAttrLocked(path, a)
	f.attrMu.Unlock()
}

// putAttrLocked caches a as the attributes of path. Called with attrMu
// held.
func (f *filesystem) putAttrLocked(path string, a lockengine.DirAttr) {
	if f.attrTimeout <= 0 {
		return
	}
	if f.attrs == nil {
		f.attrs = make(map[string]dirAttrCache)
	}
	f.attrs[path] = dirAttrCache{attr: a, at: time.Now()}
}

// forgetAttr drops the cached attributes of path and of everything below
// it.
func (f *filesystem) forgetAttr(path string) {
	f.attrMu.Lock()
	defer f.attrMu.Unlock()
	f.attrGen++
	delete(f.attrs, path)
	prefix := path + "/"
	for p := range f.attrs {
		if strings.HasPrefix(p, prefix) {
			delete(f.attrs, p)
		}
	}
}

// pruneAttrs drops the cache entries that have expired (the sweep calls
// it, so that the cache does not keep every directory ever looked up).
func (f *filesystem) pruneAttrs() {
	f.attrMu.Lock()
	defer f.attrMu.Unlock()
	for p, c := range f.attrs {
		if time.Since(c.at) >= f.attrTimeout {
			delete(f.attrs, p)
		}
	}
}

// Permission bits as the mode's owner, group and other triplets use them.
const (
	permRead  = 4
	permWrite = 2
	permExec  = 1
)

// permits reports whether caller c has the permissions want (a mask of
// permRead, permWrite, permExec) on a directory with attributes a, as the
// kernel's generic_permission decides for a process without capabilities:
// the owner's triplet for the owner, else the group's for a member of the
// group (its primary or a supplementary group), else the other triplet.
// Root (uid 0) may do anything.
func permits(c *fuse.Caller, a lockengine.DirAttr, want uint32) bool {
	if c.Uid == 0 {
		return true
	}
	if c.Uid == a.UID {
		return (a.Mode>>6)&want == want
	}
	group := (a.Mode>>3)&want == want
	other := a.Mode&want == want
	if group == other {
		// Membership does not change the answer: no need to read the
		// caller's supplementary groups.
		return group
	}
	if inGroup(c, a.GID) {
		return group
	}
	return other
}

// inGroup reports whether caller c is in group gid: its (file system)
// group id, or one of its supplementary groups as /proc/PID/status shows
// them now. A caller whose pid the daemon cannot see (pid 0: another pid
// namespace) counts with its primary group only.
func inGroup(c *fuse.Caller, gid uint32) bool {
	if c.Gid == gid {
		return true
	}
	return slices.Contains(supplementaryGroups(c.Pid), gid)
}

// supplementaryGroups returns the supplementary groups of thread pid (the
// FUSE request header carries the calling thread's id) from the Groups
// line of /proc/PID/status; nil when they cannot be read.
func supplementaryGroups(pid uint32) []uint32 {
	if pid == 0 {
		return nil
	}
	data, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil
	}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		var out []uint32
		for _, f := range bytes.Fields(rest) {
			if g, err := strconv.ParseUint(string(f), 10, 32); err == nil {
				out = append(out, uint32(g))
			}
		}
		return out
	}
	return nil
}

// dirLabel names a lock directory in messages ("/" for the root).
func dirLabel(path string) string {
	if path == "" {
		return "/"
	}
	return path
}

// mayLock returns nil when the caller of ctx may take a lock on name:
// root, or a caller with write and search permission on the name's
// directory, as creating a file there would need. Otherwise an error
// wrapping EACCES (ErrNoDir when the directory does not exist). A
// context without a FUSE caller (the daemon itself, tests) may.
func (f *filesystem) mayLock(ctx context.Context, name string) error {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Uid == 0 {
		return nil
	}
	dir, _ := lockengine.SplitName(name)
	a, err := f.dirAttr(ctx, dir)
	if err != nil {
		return fmt.Errorf("lock %q: %w", name, err)
	}
	if permits(c, a, permWrite|permExec) {
		return nil
	}
	return fmt.Errorf("lock %q: uid %d (gid %d) may not write to lock directory %s (owner %d:%d, mode %#o): %w",
		name, c.Uid, c.Gid, dirLabel(dir), a.UID, a.GID, a.Mode&0o7777, syscall.EACCES)
}

// callerInMkdir reports whether the caller of ctx is in mkdir(2) or
// mkdirat(2) right now, as /proc/PID/syscall shows. Reading another
// user's needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or
// CAP_DAC_OVERRIDE); a daemon without them cannot tell, answers as if
// the caller were not in mkdir, and says so in a warning at most once a
// minute (see procWarn).
//
// Every valid name exists as a lock file, so that opens never need CREATE
// (which would hold the directory's lock while waiting) and read-only
// opens of free names work. But the kernel answers mkdir(2) with EEXIST
// when the lookup of the new name is positive, without asking the
// filesystem, and FUSE_LOOKUP does not say why the kernel looks a name up.
// So a lookup of a free name answers ENOENT when its caller is making a
// directory; every other lookup sees a lock file. A caller in a pid
// namespace the daemon cannot see (pid 0) is not recognised: its mkdir
// of a new name fails with EEXIST.
func (f *filesystem) callerInMkdir(ctx context.Context, name string) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return false
	}
	path := "/proc/" + strconv.FormatUint(uint64(c.Pid), 10) + "/syscall"
	// "NR ARGS... SP PC" while blocked in a system call; "running" while
	// on a CPU, which a caller waiting for this reply is only briefly (a
	// signal woke it to send FUSE_INTERRUPT, say): read again then.
	var data []byte
	for range 200 {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			if errors.Is(err, os.ErrPermission) {
				f.procWarn(name, c, err)
			}
			return false
		}
		if !bytes.HasPrefix(data, []byte("running")) {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	nr, _, _ := bytes.Cut(bytes.TrimSpace(data), []byte(" "))
	n, err := strconv.ParseInt(string(nr), 10, 64)
	return err == nil && slices.Contains(mkdirSyscalls, n)
}

// procWarnEvery is the least time between two warnings of procWarn.
const procWarnEvery = time.Minute

// procWarn logs, at most once per procWarnEvery, that the daemon could
// not read the system call of caller c looking up name, and what follows.
func (f *filesystem) procWarn(name string, c *fuse.Caller, err error) {
	now := time.Now().UnixNano()
	last := f.procWarned.Load()
	if last != 0 && now-last < int64(procWarnEvery) || !f.procWarned.CompareAndSwap(last, now) {
		return
	}
	f.log.Warn("cannot tell whether the caller is in mkdir: its mkdir of a new name fails with EEXIST;"+
		" the daemon needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE) to read /proc/PID/syscall",
		"lock", name, "uid", c.Uid, "pid", c.Pid, "err", err)
}

// showing returns the nodes the kernel knows that show lock directory
// path: its node in the tree and its mirrors under every view (M/.try/P,
// M/.timeout/SECS/P, M/A/.try/B for P = A/B, and P's own views
// M/P/.try, ...). The first is the tree's node, or nil when the kernel
// does not know it.
func (r *lockDir) showing(path string) []*fs.Inode {
	var comps []string
	if path != "" {
		comps = strings.Split(path, "/")
	}
	out := []*fs.Inode{nil}
	var visit func(n *fs.Inode, comps []string, inView bool)
	visit = func(n *fs.Inode, comps []string, inView bool) {
		if len(comps) == 0 {
			if inView {
				out = append(out, n)
			} else {
				out[0] = n
			}
		} else if ch := n.GetChild(comps[0]); ch != nil {
			if _, ok := ch.Operations().(*lockDir); ok {
				visit(ch, comps[1:], inView)
			}
		}
		if inView {
			return // views have no views
		}
		// n's own views show n's path, so they show path below it too.
		for _, name := range reservedDirs {
			v := n.GetChild(name)
			if v == nil {
				continue
			}
			switch vn := v.Operations().(type) {
			case *lockDir:
				if vn.viewRoot {
					visit(v, comps, true)
				}
			case *timeoutDir:
				for _, secs := range v.Children() {
					visit(secs, comps, true)
				}
			}
		}
	}
	visit(r.EmbeddedInode(), comps, false)
	return out
}

// invalidateDir asks the kernel to drop the attributes it caches of the
// nodes that show lock directory path, in the tree and under every view
// (see showing), and of the lock files in them: they report the
// directory's owner and mode, which changed. The invalidation
// (FUSE_NOTIFY_INVAL_INODE, without pages) takes no inode lock in the
// kernel, so it is safe from within a request.
func (r *lockDir) invalidateDir(path string) {
	for _, n := range r.showing(path) {
		if n == nil {
			continue
		}
		_ = n.NotifyContent(-1, 0)
		for _, ch := range n.Children() {
			if _, ok := ch.Operations().(*lockNode); ok {
				_ = ch.NotifyContent(-1, 0)
			}
		}
	}
}

// invalidateMirrors asks the kernel to drop its entries of name in the
// mirrors of lock directory parent (not in parent's node in the tree):
// name became a lock directory or stopped being one (mkdir, rmdir through
// this daemon), and under the views the kernel may still take it for the
// other. Called from within Mkdir and Rmdir: the kernel holds the tree
// node's inode lock then, which FUSE_NOTIFY_INVAL_ENTRY on that node would
// wait for, so it is left out; the mirrors are other inodes.
func (r *lockDir) invalidateMirrors(parent, name string) {
	for _, n := range r.showing(parent)[1:] {
		_ = n.NotifyEntry(name)
	}
}
