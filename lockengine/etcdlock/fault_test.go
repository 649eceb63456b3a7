package etcdlock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// leaseOf returns the lease of name's request keys (they must exist and
// share one lease).
func leaseOf(t *testing.T, prefix, name string) clientv3.LeaseID {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+name+"/q/", clientv3.WithPrefix())
	require.NoError(t, err)
	require.NotEmpty(t, resp.Kvs, "no keys for %q", name)
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// valid calls the Valid method etcdlock holds have.
func valid(h lockengine.Hold) bool {
	return h.(interface{ Valid() bool }).Valid()
}

func waitLost(t *testing.T, l *lostRec, what string) error {
	t.Helper()
	select {
	case <-l.ch:
		return l.Err()
	case <-time.After(timeout):
		t.Fatalf("%s: not reported lost", what)
		return nil
	}
}

// Revoking the session lease from another client loses every hold of the
// session at once, fails its waiters, and the backend goes on with a new
// session.
func TestRevokedSessionLosesEverything(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	a, b := bs[0], bs[1]
	ctx := ctxT(t)
	lost1, lost2 := newLost(), newLost()
	h1, err := a.Lock(ctx, "r1", ex, lost1.fn)
	require.NoError(t, err)
	h2, err := a.Lock(ctx, "r2", sh, lost2.fn)
	require.NoError(t, err)
	hb, err := b.Lock(ctx, "w", ex, nil)
	require.NoError(t, err)
	waiting := lockAsync(ctx, a, "w", ex, nil)
	waitFor(t, "waiter queued", func() bool { return queued(t, prefix, "w") == 2 })

	require.True(t, valid(h1))
	old := leaseOf(t, prefix, "r1")
	_, err = admin.Revoke(ctx, old)
	require.NoError(t, err)

	for _, l := range []*lostRec{lost1, lost2} {
		err := waitLost(t, l, "hold of the revoked session")
		require.ErrorIs(t, err, lockengine.ErrLost)
	}
	select {
	case r := <-waiting:
		require.ErrorIs(t, r.err, etcdlock.ErrSessionExpired)
	case <-time.After(timeout):
		t.Fatal("waiter of the revoked session still waits")
	}
	require.Equal(t, 1, queued(t, prefix, "w"), "only the holder's key is left")
	require.False(t, valid(h1))
	require.False(t, valid(h2))

	// The names are free for others; the lost holds do nothing any more.
	h, err := b.TryLock(ctx, "r1", ex, nil)
	require.NoError(t, err)
	require.NoError(t, h1.Unlock())
	require.NoError(t, h2.Unlock())
	require.Equal(t, 1, queued(t, prefix, "r1"), "Unlock of a lost hold did not touch the new holder")
	require.NoError(t, h.Unlock())
	require.NoError(t, hb.Unlock())

	// The backend starts a new session for new requests.
	h3, err := a.Lock(ctx, "r1", ex, nil)
	require.NoError(t, err)
	require.NotEqual(t, old, leaseOf(t, prefix, "r1"))
	require.NoError(t, h3.Unlock())
	require.Equal(t, int32(1), lost1.calls.Load())
	require.Equal(t, int32(1), lost2.calls.Load())
}

// A key deleted by an administrator loses that hold only.
func TestKeyDeletedByAdmin(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	a := bs[0]
	ctx := ctxT(t)
	lostA, lostB := newLost(), newLost()
	_, err := a.Lock(ctx, "a", ex, lostA.fn)
	require.NoError(t, err)
	hb, err := a.Lock(ctx, "b", ex, lostB.fn)
	require.NoError(t, err)
	_, err = admin.Delete(ctx, prefix+"a/q/", clientv3.WithPrefix())
	require.NoError(t, err)
	err = waitLost(t, lostA, "hold whose key was deleted")
	require.ErrorIs(t, err, lockengine.ErrLost)
	require.ErrorIs(t, err, etcdlock.ErrKeyDeleted)
	// The session lives on: a new grant uses the same lease.
	hc, err := a.Lock(ctx, "c", ex, nil)
	require.NoError(t, err)
	require.Equal(t, leaseOf(t, prefix, "b"), leaseOf(t, prefix, "c"))
	require.NoError(t, hc.Unlock())
	require.NoError(t, hb.Unlock())
	require.Zero(t, lostB.calls.Load())
}

// Close revokes the lease: another backend gets the names at once, and
// calls in progress fail with ErrClosed.
func TestCloseRevokes(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	a, b := bs[0], bs[1]
	ctx := ctxT(t)
	lost := newLost()
	_, err := a.Lock(ctx, "x", ex, lost.fn)
	require.NoError(t, err)
	_, err = a.Lock(ctx, "s", sh, nil)
	require.NoError(t, err)
	hy, err := b.Lock(ctx, "y", ex, nil)
	require.NoError(t, err)
	waiting := lockAsync(ctx, a, "y", ex, nil)
	waitFor(t, "waiter queued", func() bool { return queued(t, prefix, "y") == 2 })

	require.NoError(t, a.Close())
	r := <-waiting
	require.ErrorIs(t, r.err, lockengine.ErrClosed)
	for _, name := range []string{"x", "s"} {
		require.Zero(t, allKeys(t, prefix, name), "keys of %q revoked", name)
		h, err := b.TryLock(ctx, name, ex, nil)
		require.NoError(t, err, "%q is free at once", name)
		require.NoError(t, h.Unlock())
	}
	require.Equal(t, 1, queued(t, prefix, "y"))
	require.NoError(t, hy.Unlock())
	_, err = a.Lock(ctx, "z", ex, nil)
	require.ErrorIs(t, err, lockengine.ErrClosed)
	_, err = a.TryLock(ctx, "z", ex, nil)
	require.ErrorIs(t, err, lockengine.ErrClosed)
	require.NoError(t, a.Close(), "Close is idempotent")
	require.Zero(t, lost.calls.Load(), "Close releases without reporting loss")
}

func TestUnreachableAtStart(t *testing.T) {
	dead, err := freeURL() // nothing listens there
	require.NoError(t, err)
	start := time.Now()
	_, err = etcdlock.New(context.Background(), etcdlock.Options{
		Endpoints: []string{dead}, DialTimeout: time.Second,
	})
	require.ErrorIs(t, err, etcdlock.ErrUnavailable)
	require.Contains(t, err.Error(), dead)
	require.Less(t, time.Since(start), 15*time.Second, "bounded by DialTimeout")

	_, err = etcdlock.New(context.Background(), etcdlock.Options{})
	require.Error(t, err, "no endpoints")
}

// etcd stops while locks are held: holders see lost within TTL plus one
// keepalive interval, new requests fail with ErrUnavailable after
// OpTimeout, and after etcd is back the backend works with a new session
// and the old grant stays lost.
func TestEtcdStopped(t *testing.T) {
	dir := t.TempDir()
	clientURL, err := freeURL()
	require.NoError(t, err)
	peerURL, err := freeURL()
	require.NoError(t, err)
	srv, err := startEtcd(dir, clientURL, peerURL)
	require.NoError(t, err)
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(srv.Close) }
	t.Cleanup(func() { stop() })

	const ttl = 2 * time.Second
	b, err := etcdlock.New(context.Background(), etcdlock.Options{
		Endpoints: []string{clientURL}, Prefix: "/stopped/",
		TTL: ttl, OpTimeout: time.Second, DialTimeout: 10 * time.Second,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() }) // may fail to revoke: etcd may be gone
	ctx := ctxT(t)
	lost := newLost()
	h, err := b.Lock(ctx, "x", ex, lost.fn)
	require.NoError(t, err)

	require.True(t, valid(h))
	start := time.Now()
	stop()
	t.Logf("etcd stopped in %v", time.Since(start))
	// A request while etcd is gone fails within OpTimeout (or as soon as
	// the session ends, if that comes first).
	_, err = b.Lock(ctx, "z", ex, nil)
	require.Error(t, err)
	require.True(t, errors.Is(err, etcdlock.ErrUnavailable) || errors.Is(err, etcdlock.ErrSessionExpired), "%v", err)
	require.Less(t, time.Since(start), 10*time.Second)
	waitFor(t, "hold invalid", func() bool { return !valid(h) })
	invalid := time.Since(start)
	err = waitLost(t, lost, "hold after etcd stopped")
	elapsed := time.Since(start)
	require.ErrorIs(t, err, lockengine.ErrLost)
	require.ErrorIs(t, err, etcdlock.ErrSessionExpired)
	// Slack for a loaded machine on top of the bound.
	require.Less(t, elapsed, ttl+ttl/3+3*time.Second, "lost within TTL + one keepalive")
	require.Less(t, invalid, ttl+ttl/3+3*time.Second)
	t.Logf("invalid %v, lost %v after etcd stopped (ttl %v)", invalid, elapsed, ttl)

	// Requests fail within OpTimeout; concurrent ones share one attempt
	// to start a new session (they do not take OpTimeout each in turn).
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = b.TryLock(ctx, fmt.Sprint("y", i), ex, nil)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.ErrorIs(t, err, etcdlock.ErrUnavailable)
	}
	require.Less(t, time.Since(start), 7*time.Second, "bounded by OpTimeout, not 8 x OpTimeout")
	t.Logf("unavailable after %v: %v", time.Since(start), errs[0])

	// etcd comes back (it restores the old lease with a fresh TTL).
	srv2, err := startEtcd(dir, clientURL, peerURL)
	require.NoError(t, err)
	t.Cleanup(srv2.Close)
	var h2 lockengine.Hold
	waitFor(t, "the name granted again under a new session", func() bool {
		h2, err = b.TryLock(ctx, "x", ex, nil)
		return err == nil
	})
	require.NoError(t, h.Unlock(), "unlocking the lost hold is a no-op")
	require.NoError(t, h2.Unlock())
	require.Equal(t, int32(1), lost.calls.Load())
	require.NoError(t, b.Close())
}

// The engine's lease reports loss through Done/Err when the session ends.
func TestQueueLeaseLost(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	qa, qb := lockengine.NewQueue(bs[0], lockengine.QueueOptions{}), lockengine.NewQueue(bs[1], lockengine.QueueOptions{})
	t.Cleanup(func() { require.NoError(t, qa.Close()) })
	t.Cleanup(func() { require.NoError(t, qb.Close()) })
	ctx := ctxT(t)
	l, err := qa.Acquire(ctx, "q", ex)
	require.NoError(t, err)
	require.NotZero(t, l.Token())
	wait := make(chan *lockengine.Lease, 1)
	go func() {
		l2, err := qb.Acquire(ctx, "q", ex)
		require.NoError(t, err)
		wait <- l2
	}()
	waitFor(t, "other engine queued", func() bool { return queued(t, prefix, "q") == 2 })
	_, err = admin.Revoke(ctx, leaseOf(t, prefix, "q"))
	require.NoError(t, err)
	select {
	case <-l.Done():
	case <-time.After(timeout):
		t.Fatal("lease not ended after its session was revoked")
	}
	require.ErrorIs(t, l.Err(), lockengine.ErrLost)
	require.True(t, l.Lost())
	l2 := <-wait
	require.Greater(t, l2.Token(), l.Token())
	require.NoError(t, l2.Release())
	require.NoError(t, l.Release())
}

// A request on a session whose lease was revoked before the keepalive loop
// noticed starts a new session at once instead of failing.
func TestRevokedIdleSessionRecovers(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	ctx := ctxT(t)
	h, err := bs[0].Lock(ctx, "a", ex, nil)
	require.NoError(t, err)
	old := leaseOf(t, prefix, "a")
	require.NoError(t, h.Unlock())
	_, err = admin.Revoke(ctx, old)
	require.NoError(t, err)
	for _, m := range []lockengine.Mode{ex, sh} {
		h, err = bs[0].TryLock(ctx, "b", m, nil)
		require.NoError(t, err)
		require.NotEqual(t, old, leaseOf(t, prefix, "b"))
		require.NoError(t, h.Unlock())
	}
}
