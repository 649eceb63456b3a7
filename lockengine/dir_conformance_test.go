package lockengine_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/enginetest"
)

// dirEngines returns two engines on one backing directory: two daemons
// sharing a state dir.
func dirEngines(t *testing.T) (a, b lockengine.Engine) {
	dir := t.TempDir()
	open := func() lockengine.Engine {
		be, err := lockengine.OpenDir(dir, lockengine.DirOptions{Heartbeat: 100 * time.Millisecond})
		require.NoError(t, err)
		q := lockengine.NewQueue(be, nil, lockengine.WithLockDelay(enginetest.LockDelay))
		t.Cleanup(func() { require.NoError(t, q.Close()) })
		return q
	}
	return open(), open()
}

func TestDirConformance(t *testing.T) {
	enginetest.Run(t, dirEngines)
}
