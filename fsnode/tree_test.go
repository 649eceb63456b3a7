package fsnode

import (
	"context"
	"testing"
	"time"

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
