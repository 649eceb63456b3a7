package enginetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock directories (lockengine.Tree): the cases below run through both
// engines of a Factory (two daemons on one store) and, at the Backend
// level, through both backends of a BackendFactory.

func init() {
	for name, c := range map[string]func(t *testing.T, f Factory){
		"TreeBasics":        testTreeBasics,
		"TreeErrors":        testTreeErrors,
		"TreeTwoEngines":    testTreeTwoEngines,
		"TreeNestedCounter": testTreeNestedCounter,
		"TreeDistinctNames": testTreeDistinctNames,
		"TreeDeep":          testTreeDeep,
		"TreeTokens":        testTreeTokens,
		"TreeReopen":        testTreeReopen,
		"TreeRaces":         testTreeRaces,
	} {
		Cases[name] = c
	}
	for name, c := range map[string]func(t *testing.T, f BackendFactory){
		"TreeLockOutsideTree":  testBackendTreeLockOutside,
		"TreeHoldersKeepNames": testBackendTreeHolders,
		"TreeReopen":           testBackendTreeReopen,
	} {
		BackendCases[name] = c
	}
}

// TreeOptions tell the tree cases what a factory's store can do beyond
// the Tree contract.
type TreeOptions struct {
	// Reopen opens one more Backend on the factory's store, as a daemon
	// started on it later would, and registers its Close with t.Cleanup
	// (cases may close it earlier). Nil skips the cases that need it.
	Reopen func(t *testing.T) lockengine.Backend
	// AnyOwner: directories can be given to any user and group (the dir
	// backend as root; etcd always). Otherwise the cases use the test's
	// own uid and gid.
	AnyOwner bool
}

var treeOpts sync.Map // *testing.T -> TreeOptions

// RegisterTree lets a Factory or BackendFactory describe its store to the
// tree cases, for the t it was called with (cases look it up after calling
// the factory).
func RegisterTree(t *testing.T, o TreeOptions) {
	treeOpts.Store(t, o)
	t.Cleanup(func() { treeOpts.Delete(t) })
}

func treeOptsFor(t *testing.T) TreeOptions {
	if o, ok := treeOpts.Load(t); ok {
		return o.(TreeOptions)
	}
	return TreeOptions{}
}

// owner returns the uid and gid the cases give directories: someone else
// where the store allows it, so that the attributes are visibly stored.
func owner(t *testing.T) (uid, gid uint32) {
	if treeOptsFor(t).AnyOwner {
		return 4242, 4343
	}
	return uint32(os.Geteuid()), uint32(os.Getegid())
}

func mustMkdir(t *testing.T, tr lockengine.Tree, path string) {
	t.Helper()
	uid, gid := owner(t)
	require.NoError(t, tr.Mkdir(ctxT(t), path, lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o755}), "mkdir %q", path)
}

func readDir(t *testing.T, tr lockengine.Tree, path string) []string {
	t.Helper()
	names, err := tr.ReadDir(ctxT(t), path)
	require.NoError(t, err, "readdir %q", path)
	return names
}

// requireAttr requires that path has want's owner, group and mode.
func requireAttr(t *testing.T, tr lockengine.Tree, path string, want lockengine.DirAttr, what string) lockengine.DirAttr {
	t.Helper()
	got, err := tr.StatDir(ctxT(t), path)
	require.NoError(t, err, "%s: stat %q", what, path)
	require.Equal(t, want.UID, got.UID, "%s: uid of %q", what, path)
	require.Equal(t, want.GID, got.GID, "%s: gid of %q", what, path)
	require.Equal(t, fmt.Sprintf("%#o", want.Mode), fmt.Sprintf("%#o", got.Mode), "%s: mode of %q", what, path)
	require.False(t, got.Mtime.IsZero(), "%s: mtime of %q", what, path)
	return got
}

// promptErr runs acquire and requires that it fails, within Timeout/2.
func promptErr(t *testing.T, what string, acquire func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- acquire(ctx) }()
	select {
	case err := <-done:
		require.Error(t, err, "%s succeeded", what)
		return err
	case <-time.After(Timeout / 2):
		t.Fatalf("%s waited instead of failing", what)
		return nil
	}
}

// requireNoAcquire requires that every kind of acquisition of name fails
// at once with want, and leaves nothing behind in e.
func requireNoAcquire(t *testing.T, e lockengine.Engine, name string, want error) {
	t.Helper()
	for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		err := promptErr(t, fmt.Sprintf("Acquire %q %v", name, m), func(ctx context.Context) error {
			l, err := e.Acquire(ctx, name, m)
			if err == nil {
				_ = l.Release()
			}
			return err
		})
		require.ErrorIs(t, err, want, "Acquire %q %v", name, m)
		_, err = e.TryAcquire(ctxT(t), name, m)
		require.ErrorIs(t, err, want, "TryAcquire %q %v", name, m)
	}
	_, ok := e.Inspect(name)
	require.False(t, ok, "a failed acquisition of %q left something behind", name)
}

// Directories are made, listed, changed and removed; their attributes are
// what was set, set-group-ID and sticky bits included; names in them are
// locks, and are not listed as directories.
func testTreeBasics(t *testing.T, f Factory) {
	a, _ := f(t)
	ctx := ctxT(t)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o3750}
	require.NoError(t, a.Mkdir(ctx, "team", attr))
	requireAttr(t, a, "team", attr, "new directory")
	mustMkdir(t, a, "team/app")
	mustMkdir(t, a, "other")
	require.Equal(t, []string{"other", "team"}, readDir(t, a, ""))
	require.Equal(t, []string{"app"}, readDir(t, a, "team"))
	require.Empty(t, readDir(t, a, "team/app"))
	root, err := a.StatDir(ctx, "")
	require.NoError(t, err)
	require.Zero(t, root, "the root's attributes belong to the mount")

	l1 := mustAcquire(t, a, "team/deploy", lockengine.Exclusive)
	l2 := mustAcquire(t, a, "team/app/deploy", lockengine.Shared)
	require.Equal(t, []string{"app"}, readDir(t, a, "team"), "names are not directories")
	_, err = a.StatDir(ctx, "team/deploy")
	require.ErrorIs(t, err, lockengine.ErrNoDir, "a name is not a directory")

	attr2 := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o700}
	require.NoError(t, a.SetDirAttr(ctx, "team", attr2))
	requireAttr(t, a, "team", attr2, "after SetDirAttr")
	require.NoError(t, a.SetDirAttr(ctx, "team", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o1777}))
	requireAttr(t, a, "team", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o1777}, "sticky")

	require.NoError(t, l1.Release())
	require.NoError(t, l2.Release())
	require.NoError(t, a.Rmdir(ctx, "team/app"), "names used before do not keep a directory")
	require.Empty(t, readDir(t, a, "team"))
	require.NoError(t, a.Rmdir(ctx, "team"))
	require.NoError(t, a.Rmdir(ctx, "other"))
	require.Empty(t, readDir(t, a, ""))
	_, err = a.StatDir(ctx, "team")
	require.ErrorIs(t, err, lockengine.ErrNoDir)
}

// Every failure of the Tree contract, with its sentinel; acquisitions
// outside the tree fail at once and leave nothing behind.
func testTreeErrors(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	// Missing directories.
	_, err := a.StatDir(ctx, "nope")
	require.ErrorIs(t, err, lockengine.ErrNoDir)
	_, err = a.ReadDir(ctx, "nope")
	require.ErrorIs(t, err, lockengine.ErrNoDir)
	require.ErrorIs(t, a.SetDirAttr(ctx, "nope", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrNoDir)
	require.ErrorIs(t, a.Rmdir(ctx, "nope"), lockengine.ErrNoDir)
	require.ErrorIs(t, a.Mkdir(ctx, "nope/x", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrNoDir)
	requireNoAcquire(t, a, "nope/x", lockengine.ErrNoDir)
	requireNoAcquire(t, b, "nope/deeper/x", lockengine.ErrNoDir)

	// Directories are not locks, and exist once.
	mustMkdir(t, a, "d")
	require.ErrorIs(t, a.Mkdir(ctx, "d", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
	require.ErrorIs(t, b.Mkdir(ctx, "d", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
	requireNoAcquire(t, a, "d", lockengine.ErrIsDir)
	requireNoAcquire(t, b, "d", lockengine.ErrIsDir)
	mustMkdir(t, b, "d/sub")
	requireNoAcquire(t, a, "d/sub", lockengine.ErrIsDir)

	// A subdirectory keeps its parent.
	require.ErrorIs(t, b.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
	require.ErrorIs(t, a.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
	require.NoError(t, a.Rmdir(ctx, "d/sub"))

	// Held names are not directories and keep theirs.
	for _, e := range []lockengine.Engine{a, b} {
		for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
			l := mustAcquire(t, e, "held", m)
			lx := mustAcquire(t, e, "d/x", m)
			for _, o := range []lockengine.Engine{a, b} {
				require.ErrorIs(t, o.Mkdir(ctx, "held", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
				require.ErrorIs(t, o.Mkdir(ctx, "d/x", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
				require.ErrorIs(t, o.Mkdir(ctx, "held/x", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrNoDir)
				require.ErrorIs(t, o.Rmdir(ctx, "held"), lockengine.ErrNoDir)
				require.ErrorIs(t, o.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
				_, err := o.ReadDir(ctx, "held")
				require.ErrorIs(t, err, lockengine.ErrNoDir)
			}
			require.NoError(t, l.Release())
			require.NoError(t, lx.Release())
		}
	}

	// A name used before (and free now) can become a directory, and then
	// is one for both engines.
	mustMkdir(t, a, "held")
	requireNoAcquire(t, a, "held", lockengine.ErrIsDir)
	requireNoAcquire(t, b, "held", lockengine.ErrIsDir)
	mustMkdir(t, b, "d/x")
	requireNoAcquire(t, a, "d/x", lockengine.ErrIsDir)
	// And a directory removed is a name again, for both.
	require.NoError(t, a.Rmdir(ctx, "d/x"))
	require.NoError(t, mustAcquire(t, b, "d/x", lockengine.Exclusive).Release())
	require.NoError(t, a.Rmdir(ctx, "d"))
	requireNoAcquire(t, b, "d/x", lockengine.ErrNoDir)
	require.Empty(t, a.Snapshot())
	require.Empty(t, b.Snapshot())
}

// Two daemons see one tree: a directory made through one is seen and
// usable through the other, attributes changed through one are seen
// through the other, and a name held through one keeps its directory from
// being removed through the other. (A name that another daemon only waits
// for is held by someone, so it keeps the directory too; the dir backend
// does not see the waiter itself in the instant of a handoff, see
// docs/design.md.)
func testTreeTwoEngines(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o2770}
	require.NoError(t, a.Mkdir(ctx, "s", attr))
	requireAttr(t, b, "s", attr, "made through the other engine")
	require.Equal(t, []string{"s"}, readDir(t, b, ""))
	mustMkdir(t, b, "s/t")
	require.Equal(t, []string{"t"}, readDir(t, a, "s"))

	attr.Mode = 0o750
	require.NoError(t, b.SetDirAttr(ctx, "s", attr))
	requireAttr(t, a, "s", attr, "changed through the other engine")

	l := mustAcquire(t, a, "s/x", lockengine.Exclusive)
	_, err := b.TryAcquire(ctx, "s/x", lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	ch := acquireAsync(ctx, b, "s/x", lockengine.Exclusive)
	waitFor(t, "waiter queued", func() bool { return waiters(b, "s/x") == 1 })
	require.NoError(t, b.Rmdir(ctx, "s/t"))
	for _, e := range []lockengine.Engine{a, b} {
		require.ErrorIs(t, e.Rmdir(ctx, "s"), lockengine.ErrNotEmpty, "holder in one engine, waiter in the other")
	}
	require.NoError(t, l.Release())
	l2 := get(t, ch)
	require.ErrorIs(t, a.Rmdir(ctx, "s"), lockengine.ErrNotEmpty, "held through the other engine")
	require.ErrorIs(t, b.Rmdir(ctx, "s"), lockengine.ErrNotEmpty, "held through this engine")
	require.NoError(t, l2.Release())
	require.NoError(t, a.Rmdir(ctx, "s"))
	_, err = b.StatDir(ctx, "s")
	require.ErrorIs(t, err, lockengine.ErrNoDir, "removed through the other engine")
	requireNoAcquire(t, b, "s/x", lockengine.ErrNoDir)
}

// A nested name excludes across two engines like a top-level one.
func testTreeNestedCounter(t *testing.T, f Factory) {
	a, b := f(t)
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		mustMkdir(t, a, d)
	}
	const (
		name = "a/b/c/n"
		perG = 60
		gs   = 4
	)
	var (
		inside, readers atomic.Int32
		counter         int // guarded by the lock under test
		want            int
		wg              sync.WaitGroup
	)
	for g := range gs {
		for i := range perG {
			if (i+g)%4 != 0 {
				want++
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := []lockengine.Engine{a, b}[g%2]
			for i := range perG {
				mode := lockengine.Exclusive
				if (i+g)%4 == 0 {
					mode = lockengine.Shared
				}
				ctx, cancel := opCtx()
				l, err := e.Acquire(ctx, name, mode)
				cancel()
				if !assert.NoError(t, err) {
					return
				}
				if mode == lockengine.Exclusive {
					assert.Equal(t, int32(1), inside.Add(1), "two exclusive holders of a nested name")
					assert.Zero(t, readers.Load(), "exclusive holder with readers")
					c := counter
					time.Sleep(time.Microsecond)
					counter = c + 1
					inside.Add(-1)
				} else {
					readers.Add(1)
					assert.Zero(t, inside.Load(), "reader with an exclusive holder")
					readers.Add(-1)
				}
				assert.NoError(t, l.Release())
			}
		}()
	}
	wg.Wait()
	require.Equal(t, want, counter)
}

// A name's identity is its full path: "a/b", "b", "a%2Fb" (a top-level
// name with the characters a backend might use to encode a slash) and
// "a/b%2Fc" are different locks, and so are the directories "x/y" and
// "x%2Fy".
func testTreeDistinctNames(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	mustMkdir(t, a, "a")
	names := []string{"a/b", "b", "a%2Fb", "a%252Fb", "a/b%2Fc", "a%", "%2F", "a/%"}
	var ls []*lockengine.Lease
	for i, n := range names {
		e := []lockengine.Engine{a, b}[i%2]
		l, err := e.TryAcquire(ctx, n, lockengine.Exclusive)
		require.NoError(t, err, "%q is a lock of its own", n)
		ls = append(ls, l)
	}
	for i, n := range names {
		o := []lockengine.Engine{b, a}[i%2]
		_, err := o.TryAcquire(ctx, n, lockengine.Shared)
		require.ErrorIs(t, err, lockengine.ErrWouldBlock, "%q through the other engine", n)
	}
	for _, l := range ls {
		require.NoError(t, l.Release())
	}
	mustMkdir(t, a, "x")
	mustMkdir(t, b, "x/y")
	mustMkdir(t, a, "x%2Fy")
	mustMkdir(t, b, "x%2Fy/z")
	require.Equal(t, []string{"a", "x", "x%2Fy"}, readDir(t, b, ""))
	require.Equal(t, []string{"y"}, readDir(t, a, "x"))
	require.Equal(t, []string{"z"}, readDir(t, a, "x%2Fy"))
	require.Empty(t, readDir(t, a, "x/y"))
	l := mustAcquire(t, a, "x/y/n", lockengine.Exclusive)
	require.NoError(t, b.Rmdir(ctx, "x%2Fy/z"))
	require.NoError(t, b.Rmdir(ctx, "x%2Fy"), "a held name in x/y keeps x%%2Fy")
	require.ErrorIs(t, b.Rmdir(ctx, "x/y"), lockengine.ErrNotEmpty)
	require.NoError(t, l.Release())
	require.NoError(t, b.Rmdir(ctx, "x/y"))
	require.NoError(t, b.Rmdir(ctx, "x"))
}

// A name 32 components deep works like any other, through both engines.
func testTreeDeep(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	const depth = 32
	var dirs []string
	path := ""
	for i := range depth - 1 {
		path = lockengine.JoinName(path, fmt.Sprintf("d%02d", i))
		dirs = append(dirs, path)
		mustMkdir(t, []lockengine.Engine{a, b}[i%2], path)
	}
	name := path + "/n"
	require.Len(t, strings.Split(name, "/"), depth)
	require.Empty(t, readDir(t, b, path))
	require.Equal(t, []string{"d30"}, readDir(t, b, dirs[len(dirs)-2]))
	l := mustAcquire(t, a, name, lockengine.Exclusive)
	_, err := b.TryAcquire(ctx, name, lockengine.Exclusive)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	ch := acquireAsync(ctx, b, name, lockengine.Exclusive)
	notYet(t, ch, "waiter of a deep name")
	require.ErrorIs(t, a.Rmdir(ctx, path), lockengine.ErrNotEmpty)
	require.ErrorIs(t, b.Rmdir(ctx, path), lockengine.ErrNotEmpty)
	info, ok := b.Inspect(name)
	require.True(t, ok)
	require.Equal(t, name, info.Name)
	require.NoError(t, l.Release())
	l2 := get(t, ch)
	require.Greater(t, l2.Token(), l.Token())
	require.NoError(t, l2.Release())
	for i := len(dirs) - 1; i >= 0; i-- {
		require.NoError(t, []lockengine.Engine{a, b}[i%2].Rmdir(ctx, dirs[i]), "rmdir %q", dirs[i])
	}
	require.Empty(t, readDir(t, a, ""))
}

// Tokens of a nested name strictly increase across engines, also when its
// directory is removed and made again.
func testTreeTokens(t *testing.T, f Factory) {
	a, b := f(t)
	ctx := ctxT(t)
	var last uint64
	for round := range 3 {
		mustMkdir(t, a, "t")
		mustMkdir(t, b, "t/u")
		for i := range 6 {
			e := []lockengine.Engine{a, b}[i%2]
			l := mustAcquire(t, e, "t/u/x", lockengine.Exclusive)
			require.Greater(t, l.Token(), last, "round %d grant %d", round, i)
			last = l.Token()
			require.NoError(t, l.Release())
		}
		s := mustAcquire(t, b, "t/u/x", lockengine.Shared)
		require.GreaterOrEqual(t, s.Token(), last, "shared grant carries the current generation")
		require.NoError(t, s.Release())
		require.NoError(t, a.Rmdir(ctx, "t/u"))
		require.NoError(t, b.Rmdir(ctx, "t"))
	}
}

// Directories and their attributes survive closing every engine and
// opening the store again.
func testTreeReopen(t *testing.T, f Factory) {
	a, b := f(t)
	o := treeOptsFor(t)
	if o.Reopen == nil {
		t.Skip("the factory cannot reopen its store")
	}
	ctx := ctxT(t)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o2750}
	require.NoError(t, a.Mkdir(ctx, "keep", attr))
	mustMkdir(t, b, "keep/sub")
	attr.Mode = 0o1770
	require.NoError(t, b.SetDirAttr(ctx, "keep", attr))
	before := requireAttr(t, a, "keep", attr, "before closing")
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())

	q := lockengine.NewQueue(o.Reopen(t), lockengine.QueueOptions{LockDelay: LockDelay})
	t.Cleanup(func() { require.NoError(t, q.Close()) })
	after := requireAttr(t, q, "keep", attr, "after reopening")
	require.True(t, after.Mtime.Equal(before.Mtime), "mtime changed from %v to %v", before.Mtime, after.Mtime)
	require.Equal(t, []string{"keep"}, readDir(t, q, ""))
	require.Equal(t, []string{"sub"}, readDir(t, q, "keep"))
	require.NoError(t, mustAcquire(t, q, "keep/sub/x", lockengine.Exclusive).Release())
	require.NoError(t, q.Rmdir(ctx, "keep/sub"))
	require.NoError(t, q.Rmdir(ctx, "keep"))
}

// Backend level: TryLock and Lock of a name outside the tree fail at once
// with ErrNoDir or ErrIsDir and leave nothing behind: the directory can be
// removed afterwards.
func testBackendTreeLockOutside(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	ctx := ctxT(t)
	check := func(be lockengine.Backend, name string, want error) {
		t.Helper()
		for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
			_, err := be.TryLock(ctx, name, m, nopLost(t))
			require.ErrorIs(t, err, want, "TryLock %q %v", name, m)
			err = promptErr(t, fmt.Sprintf("Lock %q %v", name, m), func(ctx context.Context) error {
				h, err := be.Lock(ctx, name, m, nopLost(t))
				if err == nil {
					_ = h.Unlock()
				}
				return err
			})
			require.ErrorIs(t, err, want, "Lock %q %v", name, m)
		}
	}
	check(a, "nope/x", lockengine.ErrNoDir)
	uid, gid := owner(t)
	require.NoError(t, a.Mkdir(ctx, "d", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o755}))
	check(b, "d", lockengine.ErrIsDir)
	check(b, "d/nope/x", lockengine.ErrNoDir)
	require.NoError(t, b.Mkdir(ctx, "d/e", lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o755}))
	check(a, "d/e", lockengine.ErrIsDir)
	require.NoError(t, a.Rmdir(ctx, "d/e"))
	require.NoError(t, b.Rmdir(ctx, "d"), "failed locks left something in the directory")
	check(a, "d/x", lockengine.ErrNoDir)
}

// Backend level: a name held through one backend cannot become a
// directory, nor its directory be removed, through the other; once it is
// unlocked both can.
func testBackendTreeHolders(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	ctx := ctxT(t)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o755}
	require.NoError(t, a.Mkdir(ctx, "d", attr))
	for _, m := range []lockengine.Mode{lockengine.Exclusive, lockengine.Shared} {
		h := mustLock(t, a, "d/x", m, nopLost(t))
		top := mustLock(t, a, "n", m, nopLost(t))
		require.ErrorIs(t, b.Rmdir(ctx, "d"), lockengine.ErrNotEmpty, "%v", m)
		require.ErrorIs(t, b.Mkdir(ctx, "n", attr), lockengine.ErrExist, "%v", m)
		require.ErrorIs(t, b.Mkdir(ctx, "d/x", attr), lockengine.ErrExist, "%v", m)
		require.ErrorIs(t, a.Rmdir(ctx, "d"), lockengine.ErrNotEmpty, "%v, own hold", m)
		require.ErrorIs(t, a.Mkdir(ctx, "n", attr), lockengine.ErrExist, "%v, own hold", m)
		require.NoError(t, h.Unlock())
		require.NoError(t, top.Unlock())
	}
	require.NoError(t, b.Mkdir(ctx, "n", attr), "a name unlocked can become a directory")
	require.NoError(t, b.Rmdir(ctx, "d"), "a directory whose names are unlocked can be removed")
	require.NoError(t, a.Rmdir(ctx, "n"))
}

// Backend level: directories and attributes survive Close and a new
// backend on the store; the new backend locks in them.
func testBackendTreeReopen(t *testing.T, f BackendFactory) {
	a, b, _ := f(t)
	o := treeOptsFor(t)
	if o.Reopen == nil {
		t.Skip("the factory cannot reopen its store")
	}
	ctx := ctxT(t)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o3711}
	require.NoError(t, a.Mkdir(ctx, "r", attr))
	require.NoError(t, a.Mkdir(ctx, "r/s", attr))
	h := mustLock(t, a, "r/s/x", lockengine.Exclusive, nopLost(t))
	tok := h.Token()
	require.NoError(t, h.Unlock())
	before := requireAttr(t, a, "r", attr, "before closing")
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	c := o.Reopen(t)
	after := requireAttr(t, c, "r", attr, "after reopening")
	require.True(t, after.Mtime.Equal(before.Mtime), "mtime changed from %v to %v", before.Mtime, after.Mtime)
	requireAttr(t, c, "r/s", attr, "after reopening")
	h = mustLock(t, c, "r/s/x", lockengine.Exclusive, nopLost(t))
	require.Greater(t, h.Token(), tok)
	require.NoError(t, h.Unlock())
	require.NoError(t, c.Rmdir(ctx, "r/s"))
	require.NoError(t, c.Rmdir(ctx, "r"))
}

// A path is a directory or a lock, never both, and a name is held only
// while its directory exists, however Mkdir, Rmdir and acquisitions of
// the path and of a name in it race through two engines: a holder of
// "d/x" always finds "d" a directory, a holder of "d" never does.
func testTreeRaces(t *testing.T, f Factory) {
	a, b := f(t)
	const rounds = 150
	var (
		wg                 sync.WaitGroup
		heldIn, heldAsName atomic.Int32
		lastRmdir          atomic.Value // string: the last error of Rmdir
	)
	uid, gid := owner(t)
	attr := lockengine.DirAttr{UID: uid, GID: gid, Mode: 0o755}
	expected := func(err error, allowed ...error) bool {
		for _, e := range allowed {
			if errors.Is(err, e) {
				return true
			}
		}
		return assert.NoError(t, err)
	}
	// Each operation has a context of its own (opCtx): 150 rounds on a
	// loaded machine may take longer than one Timeout in all.
	run := func(f func(ctx context.Context, i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				ctx, cancel := opCtx()
				f(ctx, i)
				cancel()
			}
		}()
	}
	for _, e := range []lockengine.Engine{a, b} {
		// Make and remove the directory.
		run(func(ctx context.Context, i int) {
			if i%2 == 0 {
				expected(e.Mkdir(ctx, "d", attr), lockengine.ErrExist)
			} else {
				err := e.Rmdir(ctx, "d")
				if err != nil {
					lastRmdir.Store(err.Error())
				}
				expected(err, lockengine.ErrNotEmpty, lockengine.ErrNoDir)
			}
		})
		// Lock a name in it, waiting or not.
		run(func(ctx context.Context, i int) {
			var (
				l   *lockengine.Lease
				err error
			)
			if i%2 == 0 {
				l, err = e.TryAcquire(ctx, "d/x", lockengine.Exclusive)
			} else {
				wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
				l, err = e.Acquire(wctx, "d/x", lockengine.Shared)
				cancel()
			}
			if !expected(err, lockengine.ErrNoDir, lockengine.ErrWouldBlock, context.DeadlineExceeded) || err != nil {
				return
			}
			heldIn.Add(1)
			_, serr := e.StatDir(ctx, "d")
			assert.NoError(t, serr, "d/x is held but d is not a directory")
			assert.NoError(t, l.Release())
		})
		// Lock the path itself.
		run(func(ctx context.Context, i int) {
			l, err := e.TryAcquire(ctx, "d", lockengine.Exclusive)
			if !expected(err, lockengine.ErrIsDir, lockengine.ErrWouldBlock) || err != nil {
				return
			}
			heldAsName.Add(1)
			_, serr := e.StatDir(ctx, "d")
			assert.ErrorIs(t, serr, lockengine.ErrNoDir, "d is held as a lock and is a directory")
			assert.NoError(t, l.Release())
		})
	}
	wg.Wait()
	// Nothing the races left behind may keep the path from either role
	// now that nobody uses it: it can be a lock, then a directory with a
	// lock in it, through either engine.
	fctx := ctxT(t)
	for _, e := range []lockengine.Engine{a, b} {
		if err := e.Rmdir(fctx, "d"); !errors.Is(err, lockengine.ErrNoDir) {
			require.NoError(t, err, "rmdir d after the races (last rmdir error in them: %v)", lastRmdir.Load())
		}
		l := mustAcquire(t, e, "d", lockengine.Exclusive)
		_, err := e.StatDir(fctx, "d")
		require.ErrorIs(t, err, lockengine.ErrNoDir)
		require.NoError(t, l.Release())
		mustMkdir(t, e, "d")
		l = mustAcquire(t, e, "d/x", lockengine.Exclusive)
		require.NoError(t, l.Release())
	}
	t.Logf("held d/x %d times, d %d times", heldIn.Load(), heldAsName.Load())
}
