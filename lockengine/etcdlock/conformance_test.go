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
// cluster, each with its own client and session.
func etcdEngines(t *testing.T) (a, b lockengine.Engine) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	registerTree(t, prefix)
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
	lose = func(name string) {
		_, err := admin.Delete(context.Background(), prefix+etcdlock.EncodeName(name)+"/q/", clientv3.WithPrefix())
		if err != nil {
			t.Errorf("lose %q: %v", name, err)
		}
	}
	return bs[0], bs[1], lose
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
