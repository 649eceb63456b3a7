package etcdlock_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// Uncontended exclusive acquire+release on one name, against the shared
// single-node etcd: the backend, the engine (Queue) on it, and etcd's own
// concurrency.Mutex (what `etcdctl lock` uses) for comparison.

func BenchmarkBackendLockUnlock(b *testing.B) {
	be, err := etcdlock.New(context.Background(), etcdlock.Options{Endpoints: []string{endpoint}, Prefix: newPrefix()})
	require.NoError(b, err)
	defer be.Close()
	ctx := context.Background()
	for b.Loop() {
		h, err := be.Lock(ctx, "bench", lockengine.Exclusive, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := h.Unlock(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkQueueAcquireRelease(b *testing.B) {
	be, err := etcdlock.New(context.Background(), etcdlock.Options{Endpoints: []string{endpoint}, Prefix: newPrefix()})
	require.NoError(b, err)
	q := lockengine.NewQueue(be, lockengine.QueueOptions{})
	defer q.Close()
	ctx := context.Background()
	for b.Loop() {
		l, err := q.Acquire(ctx, "bench", lockengine.Exclusive)
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Release(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEtcdMutexLockUnlock(b *testing.B) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	require.NoError(b, err)
	defer c.Close()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(10))
	require.NoError(b, err)
	defer s.Close()
	m := concurrency.NewMutex(s, newPrefix()+"bench")
	ctx := context.Background()
	for b.Loop() {
		if err := m.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		if err := m.Unlock(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
