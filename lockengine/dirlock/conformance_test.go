package dirlock_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
	"github.com/lockfs/lockfs/lockengine/enginetest"
)

// engines returns two engines on one backing directory: two daemons
// sharing a state dir.
func engines(t *testing.T) (a, b lockengine.Engine) {
	dir := t.TempDir()
	open := func() lockengine.Engine {
		be, err := dirlock.Open(dir, dirlock.Options{Heartbeat: 100 * time.Millisecond})
		require.NoError(t, err)
		q := lockengine.NewQueue(be, lockengine.QueueOptions{LockDelay: enginetest.LockDelay})
		t.Cleanup(func() { require.NoError(t, q.Close()) })
		return q
	}
	return open(), open()
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, engines)
}
