package etcdlock_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/enginetest"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// etcdEngines returns two engines on one etcd prefix: two daemons sharing a
// cluster, each with its own client and session.
func etcdEngines(t *testing.T) (a, b lockengine.Engine) {
	_, bs := backends(t, 2, etcdlock.Options{})
	open := func(be *etcdlock.Backend) lockengine.Engine {
		q := lockengine.NewQueue(be, lockengine.QueueOptions{LockDelay: enginetest.LockDelay})
		t.Cleanup(func() { require.NoError(t, q.Close()) })
		return q
	}
	return open(bs[0]), open(bs[1])
}

// TestEtcdConformance runs the engine suite that every backend runs.
func TestEtcdConformance(t *testing.T) {
	enginetest.Run(t, etcdEngines)
}
