package dirlock_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
	"github.com/lockfs/lockfs/lockengine/enginetest"
)

// engines returns two engines on one backing directory: two daemons
// sharing a state dir. Losses are injected (enginetest.RegisterLose) by
// removing a lock file, which the holder's heartbeat notices within an
// interval.
func engines(t *testing.T) (a, b lockengine.Engine) {
	dir := t.TempDir()
	enginetest.RegisterLose(t, func(name string) {
		err := os.Remove(filepath.Join(dir, "locks", name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("lose %q: %v", name, err)
		}
	})
	open := func() lockengine.Engine {
		be, err := dirlock.Open(dir, dirlock.Options{Heartbeat: 100 * time.Millisecond})
		require.NoError(t, err)
		q := lockengine.NewQueue(be, lockengine.QueueOptions{LockDelay: enginetest.LockDelay})
		t.Cleanup(func() { require.NoError(t, q.Close()) })
		return q
	}
	registerTree(t, dir)
	return open(), open()
}

// registerTree tells the tree cases how to reopen dir: one more backend
// on it, as a daemon started later would.
func registerTree(t *testing.T, dir string) {
	enginetest.RegisterTree(t, enginetest.TreeOptions{
		Reopen: func(t *testing.T) lockengine.Backend {
			be, err := dirlock.Open(dir, dirlock.Options{Heartbeat: 100 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, be.Close()) })
			return be
		},
		AnyOwner: os.Geteuid() == 0,
	})
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, engines)
}

// backends returns two Backends on one backing directory. A hold is lost
// by removing its lock file, which the holder's heartbeat notices within
// an interval.
func backends(t *testing.T) (a, b lockengine.Backend, lose func(name string)) {
	dir := t.TempDir()
	open := func() lockengine.Backend {
		be, err := dirlock.Open(dir, dirlock.Options{Heartbeat: 50 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, be.Close()) })
		return be
	}
	lose = func(name string) {
		err := os.Remove(filepath.Join(dir, "locks", name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("lose %q: %v", name, err)
		}
	}
	registerTree(t, dir)
	return open(), open(), lose
}

// TestBackendConformance runs the Backend-level suite on the dir backend.
func TestBackendConformance(t *testing.T) {
	enginetest.RunBackend(t, backends)
}
