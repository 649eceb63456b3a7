package fsnode

import (
	"context"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

// Giving back the memory of idle names.
//
// Every name looked up gets a go-fuse node and a kernel inode, and the
// entry timeout is not zero (the attribute timeout, 1 s by default) so
// that an open of a known name costs OPEN and RELEASE only. The kernel
// keeps such a dentry, expired or not, and with it the inode, until memory
// pressure prunes it: 20,000 distinct names kept
// ~27 MB of the daemon's memory for good, and every name counted against
// its uids' names limit for good.
//
// Two ways out were weighed:
//
//   - A zero entry timeout makes the kernel drop the dentry at its last
//     dput (fuse_dentry_delete: an expired entry is not cached), so the
//     inode is forgotten at close. But every open then costs a LOOKUP
//     round trip as well, on the hot path of every lock.
//   - A periodic sweep (this file) that asks the kernel to invalidate the
//     entries of names that nobody has open and that were not looked up or
//     opened since the previous sweep (FUSE_NOTIFY_INVAL_ENTRY, which
//     unhashes the dentry; unused, it is freed at once and the kernel sends
//     FORGET). It costs one pass over the children every interval, and one
//     extra LOOKUP for a name reused after a pause of one to two intervals;
//     names in use keep their cached entries.
//
// The sweep is the cheaper one and is what Mount runs. Names that are held
// or waited on always have an open handle (the holder's or the waiter's
// open, or the descriptor a lock call came through), so they are never
// invalidated; an invalidation that races with a new lookup only costs
// that lookup a second LOOKUP later.

// counted is what a node the kernel may forget keeps for the sweep and the
// names limit: used is set by every lookup (and open) and cleared by the
// sweep; forgotten is set once the node's count has ended (forgetNode).
// Lock files, lock directories and the views below the root embed it.
type counted struct {
	used      atomic.Bool
	forgotten atomic.Bool
}

func (c *counted) counts() *counted { return c }

// countedNode is a node that embeds counted: *lockNode, *lockDir,
// *timeoutDir. It is also the node's key in the names limit.
type countedNode interface {
	fs.InodeEmbedder
	counts() *counted
}

// newNode returns a new inode of mode (S_IFREG, S_IFDIR) for n below
// parent, counted in the inodes the daemon keeps until forgetNode.
func (f *filesystem) newNode(ctx context.Context, parent *fs.Inode, n countedNode, mode uint32) *fs.Inode {
	f.inodes.Add(1)
	return parent.NewInode(ctx, n, fs.StableAttr{Mode: mode})
}

// useNode marks n used (for the sweep) and counts it against the names
// limit of the caller of ctx (see limiter.chargeName); past the limit,
// ENOLCK, logged by the limiter. A node just created for this lookup is
// then forgotten at once: it was never handed to the kernel, which would
// otherwise forget it.
func (f *filesystem) useNode(ctx context.Context, n countedNode, created bool) syscall.Errno {
	n.counts().used.Store(true)
	if err := f.lim.chargeName(ctx, n); err != nil {
		if created {
			f.forgetNode(n)
		}
		return Errno(err)
	}
	return 0
}

// forgetNode ends n's count, once: the inodes the daemon keeps, and the
// names limit of every uid charged for it.
func (f *filesystem) forgetNode(n countedNode) {
	if n.counts().forgotten.Swap(true) {
		return
	}
	f.inodes.Add(-1)
	f.lim.forgetName(n)
}

// DefaultNameSweep is the interval of the sweep when Options.NameSweep is
// zero.
const DefaultNameSweep = 30 * time.Second

// sweeper runs the sweep of one mount.
type sweeper struct {
	root *lockDir
	stop chan struct{}
}

// run sweeps every interval until stop is closed.
func (s *sweeper) run(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.sweep()
	}
}

// Directory nodes (lock directories, their mirrors under the views, and
// .timeout/SECS, one per spelling) are given back too, but not by
// invalidating their entries: that would unhash the dentry of a directory
// that is some process's working directory, whose getcwd would then fail.
// The sweep asks the kernel instead to forget those with no children that
// were not looked up since the previous sweep (FUSE_NOTIFY_PRUNE, Linux
// 6.16 and later), which drops only dentries nobody uses. On older kernels
// directory nodes stay until memory pressure prunes them; they count
// against the names limit meanwhile.

// sweep invalidates the entries of the idle lock files under every
// directory node (the root, the lock directories, the reserved directories,
// .timeout/SECS and the mirrors below them), asks the kernel to forget the
// idle directory nodes, and drops expired cached directory attributes. It
// returns the number of entries invalidated and nodes offered.
func (s *sweeper) sweep() int {
	s.root.fsys.pruneAttrs()
	root := s.root.EmbeddedInode()
	var idle []*fs.Inode
	n := sweepDir(root, &idle)
	if len(idle) > 0 {
		// ENOSYS: a kernel without FUSE_NOTIFY_PRUNE.
		_ = root.NotifyPrune(idle)
	}
	return n + len(idle)
}

// sweepDir sweeps dir and the directories below it, and appends to idle
// the directory nodes below it that the kernel may forget.
func sweepDir(dir *fs.Inode, idle *[]*fs.Inode) int {
	n := 0
	pd, _ := dir.Operations().(*lockDir)
	inRoot := pd != nil && pd.root
	for name, ch := range dir.Children() {
		switch node := ch.Operations().(type) {
		case *timeoutDir:
			n += sweepDir(ch, idle)
			if !inRoot && len(ch.Children()) == 0 && !node.used.Swap(false) {
				*idle = append(*idle, ch) // a lock directory's .timeout
			}
		case *lockDir:
			n += sweepDir(ch, idle)
			if inRoot && node.viewRoot {
				continue // the root's .try, .shared, .flock: persistent
			}
			if len(ch.Children()) == 0 && !node.used.Swap(false) {
				*idle = append(*idle, ch)
			}
		case *lockNode:
			if node.open.Load() > 0 || node.used.Swap(false) {
				continue
			}
			// Errors (ENOENT: the kernel had forgotten it already)
			// change nothing.
			_ = dir.NotifyEntry(name)
			n++
		}
	}
	return n
}
