package etcdlock_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/enginetest"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// etcdEngines returns two engines on one etcd prefix: two daemons sharing a
// cluster, each with its own client and session. Losses are injected
// (enginetest.RegisterLose) as in etcdBackends.
func etcdEngines(t *testing.T) (a, b lockengine.Engine) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	registerTree(t, prefix)
	enginetest.RegisterLose(t, loseFunc(t, prefix))
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

// etcdBackends returns two Backends on one etcd prefix. A hold is lost by
// deleting its request key with the admin client, which the holder's
// watch reports.
func etcdBackends(t *testing.T) (a, b lockengine.Backend, lose func(name string)) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	registerTree(t, prefix)
	return bs[0], bs[1], loseFunc(t, prefix)
}

// loseFunc returns a loss injector for names under prefix: it deletes
// every request key of the name with the admin client, which the holders'
// watches report as lost (and the waiters' as ended).
func loseFunc(t *testing.T, prefix string) func(name string) {
	return func(name string) {
		_, err := admin.Delete(context.Background(), prefix+etcdlock.EncodeName(name)+"/q/", clientv3.WithPrefix())
		if err != nil {
			t.Errorf("lose %q: %v", name, err)
		}
	}
}

// TestEtcdBackendConformance runs the Backend-level suite on the etcd
// backend.
func TestEtcdBackendConformance(t *testing.T) {
	enginetest.RunBackend(t, etcdBackends)
}

// registerTree tells the tree cases how to reopen prefix: one more
// backend on it, as a daemon started later would.
func registerTree(t *testing.T, prefix string) {
	enginetest.RegisterTree(t, enginetest.TreeOptions{
		Reopen: func(t *testing.T) lockengine.Backend {
			return newBackend(t, etcdlock.Options{Prefix: prefix})
		},
		AnyOwner: true,
	})
}
