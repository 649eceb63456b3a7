package fsnode

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// slowStat is an Engine whose StatDir returns attr only once release is
// closed, after closing entered.
type slowStat struct {
	lockengine.Engine
	attr             lockengine.DirAttr
	entered, release chan struct{}
}

func (e *slowStat) StatDir(ctx context.Context, path string) (lockengine.DirAttr, error) {
	close(e.entered)
	<-e.release
	return e.attr, nil
}

// A lookup that read a directory's attributes from the backend before a
// chmod through this daemon must not put them back in the cache after the
// chmod stored the new ones: for the attribute timeout the daemon would
// check permissions against the old mode.
func TestDirAttrDoesNotUndoChange(t *testing.T) {
	f := newFixture(t)
	old := lockengine.DirAttr{UID: 1000, GID: 1000, Mode: 0o777}
	eng := &slowStat{Engine: f.q, attr: old, entered: make(chan struct{}), release: make(chan struct{})}
	f.fsys.eng = eng
	f.fsys.attrTimeout = time.Hour

	done := make(chan lockengine.DirAttr)
	go func() {
		a, err := f.fsys.dirAttr(context.Background(), "team")
		if err != nil {
			t.Errorf("dirAttr: %v", err)
		}
		done <- a
	}()
	<-eng.entered
	changed := lockengine.DirAttr{UID: 1000, GID: 1000, Mode: 0o700}
	f.fsys.storeAttr("team", changed) // what Setattr does after SetDirAttr
	close(eng.release)
	require.Equal(t, old, <-done, "the racing lookup reports what it read")

	a, err := f.fsys.dirAttr(context.Background(), "team") // from the cache: StatDir would block
	require.NoError(t, err)
	require.Equal(t, changed, a, "the cache keeps the change")
}

// ctxStat is an Engine with one lock directory, team, whose StatDir and
// ReadDir fail with the context's error once it is cancelled, as the etcd
// backend's do.
type ctxStat struct{ lockengine.Engine }

func (e ctxStat) StatDir(ctx context.Context, path string) (lockengine.DirAttr, error) {
	if err := ctx.Err(); err != nil {
		return lockengine.DirAttr{}, err
	}
	if path == "team" {
		return lockengine.DirAttr{Mode: 0o755}, nil
	}
	return lockengine.DirAttr{}, lockengine.ErrNoDir
}

func (e ctxStat) ReadDir(ctx context.Context, path string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return []string{"team"}, nil
}

// A signal to the caller (FUSE_INTERRUPT: the request's context is
// cancelled) does not fail a lookup, stat or listing of lock directories
// with EINTR: they do not wait for a lock, and programs do not retry them
// (mkdir -p of a new level looks it up first).
func TestMetadataNotInterrupted(t *testing.T) {
	f := newFixture(t)
	root := newRoot(ctxStat{f.q}, f.fsys.log, nil, nil, time.Second)
	fs.NewNodeFS(root, &fs.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	var out fuse.EntryOut
	ch, errno := root.Lookup(ctx, "team", &out)
	require.Equal(t, syscall.Errno(0), errno, "lookup of a lock directory")
	require.NotNil(t, ch)
	_, errno = root.Lookup(ctx, "free", &out)
	require.Equal(t, syscall.Errno(0), errno, "lookup of a free name")
	var attr fuse.AttrOut
	require.Equal(t, syscall.Errno(0), ch.Operations().(*lockDir).Getattr(ctx, nil, &attr), "getattr")
	_, errno = root.Readdir(ctx)
	require.Equal(t, syscall.Errno(0), errno, "readdir")
}
