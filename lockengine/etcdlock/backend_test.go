package etcdlock_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

const (
	sh = lockengine.Shared
	ex = lockengine.Exclusive
)

func TestSharedTogetherAcrossBackends(t *testing.T) {
	prefix, bs := backends(t, 3, etcdlock.Options{})
	ctx := ctxT(t)
	s1, err := bs[0].TryLock(ctx, "s", sh, nil)
	require.NoError(t, err)
	s2, err := bs[1].Lock(ctx, "s", sh, nil)
	require.NoError(t, err)
	_, err = bs[2].TryLock(ctx, "s", ex, nil)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock)
	require.Equal(t, 2, queued(t, prefix, "s"), "a failed TryLock leaves no key")
	w := lockAsync(ctx, bs[2], "s", ex, nil)
	waitFor(t, "writer queued", func() bool { return queued(t, prefix, "s") == 3 })
	require.NoError(t, s1.Unlock())
	pending(t, w, "writer while a reader on another backend holds")
	require.NoError(t, s2.Unlock())
	hw := got(t, w)
	require.Greater(t, hw.Token(), s2.Token())
	require.NoError(t, hw.Unlock())
}

// A reader that arrives after a queued writer waits behind it, whichever
// backend either is on.
func TestWriterNotStarvedAcrossBackends(t *testing.T) {
	prefix, bs := backends(t, 3, etcdlock.Options{})
	ctx := ctxT(t)
	r1, err := bs[0].Lock(ctx, "ws", sh, nil)
	require.NoError(t, err)
	w := lockAsync(ctx, bs[1], "ws", ex, nil)
	waitFor(t, "writer queued", func() bool { return queued(t, prefix, "ws") == 2 })
	_, err = bs[2].TryLock(ctx, "ws", sh, nil)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "a new reader must not overtake a waiting writer")
	_, err = bs[0].TryLock(ctx, "ws", sh, nil)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "not even on the backend of the current reader")
	r2 := lockAsync(ctx, bs[2], "ws", sh, nil)
	waitFor(t, "late reader queued", func() bool { return queued(t, prefix, "ws") == 3 })
	pending(t, r2, "late reader")
	require.NoError(t, r1.Unlock())
	hw := got(t, w)
	pending(t, r2, "late reader while the writer holds")
	require.NoError(t, hw.Unlock())
	hr := got(t, r2)
	require.Greater(t, hr.Token(), hw.Token(), "the reader's token is above the writer's before it")
	require.NoError(t, hr.Unlock())
	require.Zero(t, allKeys(t, prefix, "ws"), "an unused name leaves no keys")
}

// Requests are granted in the order their keys were created, across
// backends; consecutive readers at the head are granted together.
func TestFIFOAcrossBackends(t *testing.T) {
	prefix, bs := backends(t, 3, etcdlock.Options{})
	ctx := ctxT(t)
	holder, err := bs[0].Lock(ctx, "fifo", ex, nil)
	require.NoError(t, err)
	modes := []lockengine.Mode{ex, ex, sh, sh, ex, sh, ex, ex}
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	// Each request records itself when granted and releases once the next
	// batch could not have been granted before it.
	release := make([]chan struct{}, len(modes))
	for i, m := range modes {
		release[i] = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := bs[i%3].Lock(ctx, "fifo", m, nil)
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			order = append(order, fmt.Sprint(i))
			mu.Unlock()
			<-release[i]
			assert.NoError(t, h.Unlock())
		}()
		waitFor(t, fmt.Sprintf("request %d queued", i), func() bool { return queued(t, prefix, "fifo") == i+2 })
	}
	granted := func(n int) []string {
		waitFor(t, fmt.Sprintf("%d grants", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(order) >= n
		})
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), order...)
	}
	require.NoError(t, holder.Unlock())
	// Batches: [0] [1] [2 3] [4] [5] [6] [7].
	batches := [][]int{{0}, {1}, {2, 3}, {4}, {5}, {6}, {7}}
	n := 0
	for _, batch := range batches {
		n += len(batch)
		got := granted(n)
		require.Len(t, got, n, "only the head batch is granted")
		want := make([]string, 0, len(batch))
		for _, i := range batch {
			want = append(want, fmt.Sprint(i))
		}
		require.ElementsMatch(t, want, got[n-len(batch):])
		if n < len(modes) {
			mu.Lock()
			require.Len(t, order, n)
			mu.Unlock()
		}
		for _, i := range batch {
			close(release[i])
		}
	}
	wg.Wait()
	require.Zero(t, allKeys(t, prefix, "fifo"))
}

// An interrupted Lock removes its key before it returns.
func TestCancelRemovesWaiterKey(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	ctx := ctxT(t)
	holder, err := bs[0].Lock(ctx, "c", ex, nil)
	require.NoError(t, err)
	for _, m := range []lockengine.Mode{ex, sh} {
		wctx, cancel := context.WithCancel(ctx)
		ch := lockAsync(wctx, bs[1], "c", m, nil)
		waitFor(t, "waiter queued", func() bool { return queued(t, prefix, "c") == 2 })
		cancel()
		r := <-ch
		require.ErrorIs(t, r.err, context.Canceled)
		require.Nil(t, r.h)
		require.Equal(t, 1, queued(t, prefix, "c"), "the waiter key is gone when Lock returns")
	}
	// A waiter behind the cancelled ones is not held up by them.
	next := lockAsync(ctx, bs[1], "c", ex, nil)
	waitFor(t, "waiter queued", func() bool { return queued(t, prefix, "c") == 2 })
	require.NoError(t, holder.Unlock())
	require.NoError(t, got(t, next).Unlock())
}

func TestTokens(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	ctx := ctxT(t)
	var last uint64
	for i := range 10 {
		h, err := bs[i%2].Lock(ctx, "tok", ex, nil)
		require.NoError(t, err)
		require.Greater(t, h.Token(), last, "exclusive grant %d", i)
		last = h.Token()
		require.NoError(t, h.Unlock())
		s, err := bs[(i+1)%2].Lock(ctx, "tok", sh, nil)
		require.NoError(t, err)
		require.GreaterOrEqual(t, s.Token(), last, "shared grant %d", i)
		last = s.Token()
		require.NoError(t, s.Unlock())
	}
	// While a reader holds, a writer queues; a reader behind the writer
	// gets a token above the writer's, and the next writer a larger one.
	r1, err := bs[0].Lock(ctx, "tok", sh, nil)
	require.NoError(t, err)
	w := lockAsync(ctx, bs[1], "tok", ex, nil)
	waitFor(t, "writer queued", func() bool { return queued(t, prefix, "tok") == 2 })
	r2 := lockAsync(ctx, bs[0], "tok", sh, nil)
	waitFor(t, "reader queued", func() bool { return queued(t, prefix, "tok") == 3 })
	require.NoError(t, r1.Unlock())
	hw := got(t, w)
	require.Greater(t, hw.Token(), r1.Token())
	require.NoError(t, hw.Unlock())
	hr := got(t, r2)
	require.Greater(t, hr.Token(), hw.Token())
	require.NoError(t, hr.Unlock())
	h, err := bs[1].Lock(ctx, "tok", ex, nil)
	require.NoError(t, err)
	require.Greater(t, h.Token(), hr.Token())
	require.NoError(t, h.Unlock())
}

func TestUnlockIdempotentAndNeverLost(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	ctx := ctxT(t)
	lost := newLost()
	h, err := bs[0].Lock(ctx, "u", ex, lost.fn)
	require.NoError(t, err)
	require.Equal(t, 1, allKeys(t, prefix, "u"), "the request key only")
	require.NoError(t, h.Unlock())
	require.NoError(t, h.Unlock())
	require.Zero(t, allKeys(t, prefix, "u"))
	// A second Unlock did not release a later grant.
	h2, err := bs[0].Lock(ctx, "u", ex, nil)
	require.NoError(t, err)
	require.NoError(t, h.Unlock())
	require.Equal(t, 1, queued(t, prefix, "u"))
	require.NoError(t, h2.Unlock())
	require.Zero(t, lost.calls.Load(), "an unlocked hold is never reported lost")
}

func TestInvalidInput(t *testing.T) {
	_, bs := backends(t, 1, etcdlock.Options{})
	ctx := ctxT(t)
	for _, name := range []string{"", ".", "..", "a/", "/a", "a//b", "a\x00b"} {
		_, err := bs[0].TryLock(ctx, name, ex, nil)
		require.ErrorIs(t, err, lockengine.ErrInvalidName, "%q", name)
	}
	_, err := bs[0].Lock(ctx, "m", lockengine.Mode(0), nil)
	require.ErrorIs(t, err, lockengine.ErrInvalidMode)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = bs[0].Lock(cctx, "m", ex, nil)
	require.ErrorIs(t, err, context.Canceled)
}

// Several requests of one backend for one name each get their own key
// (unlike concurrency.Mutex, whose key is prefix + lease).
func TestOneSessionManyRequests(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	ctx := ctxT(t)
	h, err := bs[0].Lock(ctx, "m", ex, nil)
	require.NoError(t, err)
	first := keyNames(t, prefix, "m")
	_, err = bs[0].TryLock(ctx, "m", ex, nil)
	require.ErrorIs(t, err, lockengine.ErrWouldBlock, "the same session does not get the name twice")
	ch := lockAsync(ctx, bs[0], "m", ex, nil)
	waitFor(t, "second request queued", func() bool { return queued(t, prefix, "m") == 2 })
	pending(t, ch, "second request of the same backend")
	require.NoError(t, h.Unlock())
	h2 := got(t, ch)
	require.NotEqual(t, first, keyNames(t, prefix, "m"), "requests in progress together have keys of their own")
	require.NoError(t, h2.Unlock())
	// Key names are reused from request to request.
	for range 3 {
		h, err := bs[0].Lock(ctx, "m", ex, nil)
		require.NoError(t, err)
		require.Equal(t, first, keyNames(t, prefix, "m"))
		require.NoError(t, h.Unlock())
	}
}

// keyNames lists the request keys of name.
func keyNames(t *testing.T, prefix, name string) []string {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+name+"/q/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	var names []string
	for _, kv := range resp.Kvs {
		names = append(names, string(kv.Key))
	}
	return names
}

// A Bump raises the holder's token above the create revision of requests
// that queued before it; each of them, when granted, still gets a token
// above every earlier one, also when the bumping daemon has gone away
// (the generation key outlives its lease).
func TestTokensAboveBump(t *testing.T) {
	for _, tc := range []struct {
		name     string
		next     lockengine.Mode
		holderGo bool // the bumping holder's backend closes instead of unlocking
	}{
		{"writer", ex, false},
		{"reader", sh, false},
		{"writer after the holder's daemon closed", ex, true},
		{"reader after the holder's daemon closed", sh, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix, bs := backends(t, 3, etcdlock.Options{})
			ctx := ctxT(t)
			h, err := bs[0].Lock(ctx, "b", ex, nil)
			require.NoError(t, err)
			w := lockAsync(ctx, bs[1], "b", tc.next, nil)
			waitFor(t, "request queued", func() bool { return queued(t, prefix, "b") == 2 })
			w2 := lockAsync(ctx, bs[2], "b", ex, nil)
			waitFor(t, "second request queued", func() bool { return queued(t, prefix, "b") == 3 })
			bumped, err := h.Bump()
			require.NoError(t, err)
			require.Greater(t, bumped, h.Token()-1, "Bump stores the new token")
			require.Equal(t, bumped, h.Token())
			if tc.holderGo {
				require.NoError(t, bs[0].Close())
			} else {
				require.NoError(t, h.Unlock())
			}
			next := got(t, w)
			require.Greater(t, next.Token(), bumped, "queued before the bump, granted after it")
			require.NoError(t, next.Unlock())
			last := got(t, w2)
			require.Greater(t, last.Token(), next.Token())
			require.NoError(t, last.Unlock())
			require.Zero(t, allKeys(t, prefix, "b"), "the last unlock removes the generation key")
		})
	}
}

// A waiter whose watch ends early (here: the history it watches from was
// compacted away) decides again on a fresh snapshot and is still granted
// in order; a waiter whose key someone deleted meanwhile queues again
// behind it.
func TestWaiterSurvivesCompaction(t *testing.T) {
	prefix, bs := backends(t, 3, etcdlock.Options{})
	ctx := ctxT(t)
	h, err := bs[0].Lock(ctx, "c", ex, nil)
	require.NoError(t, err)
	compacted := make(chan struct{})
	for _, b := range bs[1:] {
		var once sync.Once
		etcdlock.SetWatchFrom(b, func(from int64) int64 {
			// The first watch of each waiter starts at the compacted
			// revision 1; later ones where they should.
			once.Do(func() { <-compacted; from = 1 })
			return from
		})
	}
	w := lockAsync(ctx, bs[1], "c", ex, nil)
	waitFor(t, "waiter queued", func() bool { return queued(t, prefix, "c") == 2 })
	gone := lockAsync(ctx, bs[2], "c", ex, nil)
	waitFor(t, "second waiter queued", func() bool { return queued(t, prefix, "c") == 3 })
	keys, err := admin.Get(ctx, prefix+"c/q/", clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	require.NoError(t, err)
	require.Len(t, keys.Kvs, 3)
	resp, err := admin.Delete(ctx, string(keys.Kvs[2].Key)) // the second waiter's key
	require.NoError(t, err)
	_, err = admin.Compact(ctx, resp.Header.Revision)
	require.NoError(t, err)
	close(compacted)
	// The deleted waiter queues a new key, behind the first waiter.
	waitFor(t, "the deleted waiter queued again", func() bool { return queued(t, prefix, "c") == 3 })
	pending(t, w, "waiter after compaction")
	pending(t, gone, "the waiter queued again")
	require.NoError(t, h.Unlock())
	next := got(t, w)
	require.Greater(t, next.Token(), h.Token())
	pending(t, gone, "the waiter queued again, behind the first")
	require.NoError(t, next.Unlock())
	last := got(t, gone)
	require.Greater(t, last.Token(), next.Token())
	require.NoError(t, last.Unlock())
	require.Zero(t, allKeys(t, prefix, "c"))
}

// A Bump that finds the grant's key deleted (before the watch reported
// it) ends the hold at once: Valid is false when Bump returns, and the
// lost callback runs in the background, so a callback that waits (as the
// Queue's waits for the Bump to end) does not hold Bump up.
func TestBumpOfDeletedKeyLoses(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	ctx := ctxT(t)
	lostc := make(chan error, 1)
	bumped := make(chan struct{})
	// Hold the watch back so that only Bump can find out.
	gate := make(chan struct{})
	defer close(gate)
	etcdlock.SetHoldWatchGate(bs[0], gate)
	h, err := bs[0].Lock(ctx, "b", ex, func(err error) {
		<-bumped // returns only after Bump did
		lostc <- err
	})
	require.NoError(t, err)
	_, err = admin.Delete(ctx, prefix+"b/q/", clientv3.WithPrefix())
	require.NoError(t, err)
	bumpErr := make(chan error, 1)
	go func() {
		_, err := h.Bump()
		bumpErr <- err
	}()
	select {
	case err := <-bumpErr:
		require.ErrorIs(t, err, lockengine.ErrNotHeld)
	case <-time.After(timeout):
		t.Fatal("Bump waited for the lost callback")
	}
	require.False(t, h.Valid(), "Valid after a Bump found the key gone")
	close(bumped)
	select {
	case err := <-lostc:
		require.ErrorIs(t, err, lockengine.ErrLost)
		require.ErrorIs(t, err, etcdlock.ErrKeyDeleted)
	case <-time.After(timeout):
		t.Fatal("no lost callback")
	}
	require.NoError(t, h.Unlock())
}
