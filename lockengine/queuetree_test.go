package lockengine

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The Queue's part of the Tree: what only it knows (its own waiters and
// lost leases) and prompt failure of names outside the tree.

func mkdirs(t *testing.T, q *Queue, paths ...string) {
	t.Helper()
	for _, p := range paths {
		require.NoError(t, q.Mkdir(testCtx(t), p, DirAttr{Mode: 0o755}), "mkdir %q", p)
	}
}

// A name queued only in this Queue (its backend call waits, which the
// fake, like the dir backend, does not report to Mkdir and Rmdir) keeps
// its path from becoming a directory and its directory from going away.
func TestQueueTreeSeesOwnWaiters(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	mkdirs(t, q, "d")
	b.block("d/x")
	b.block("top")
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chs := []<-chan acquired{acquireAsync(wctx, q, "d/x", Exclusive), acquireAsync(wctx, q, "top", Shared)}
	eventually(t, "waiters at the backend", func() bool { return b.waitingLocks("d/x") == 1 && b.waitingLocks("top") == 1 })
	b.unblock("top") // granted: the fake would now refuse Mkdir itself
	l := granted(t, chs[1])
	b.block("top")
	require.NoError(t, l.Release())
	chs[1] = acquireAsync(wctx, q, "top", Shared)
	eventually(t, "waiter at the backend", func() bool { return b.waitingLocks("top") == 1 })
	b.mu.Lock()
	delete(b.blocked, "top") // the fake no longer knows, only the Queue does
	delete(b.blocked, "d/x")
	b.mu.Unlock()

	require.ErrorIs(t, q.Mkdir(ctx, "top", DirAttr{}), ErrExist)
	require.ErrorIs(t, q.Mkdir(ctx, "d/x", DirAttr{}), ErrExist)
	require.ErrorIs(t, q.Rmdir(ctx, "d"), ErrNotEmpty)
	cancel()
	for _, ch := range chs {
		r := <-ch
		require.ErrorIs(t, r.err, context.Canceled)
	}
	eventually(t, "waiters gone", func() bool { _, ok := q.occupied(""); return !ok })
	require.NoError(t, q.Rmdir(ctx, "d"))
	require.NoError(t, q.Mkdir(ctx, "top", DirAttr{}))
}

// A lost lease that its holder has not released yet keeps its name, as
// Snapshot shows it.
func TestQueueTreeSeesLostLeases(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	mkdirs(t, q, "d")
	l, err := q.Acquire(ctx, "d/x", Exclusive)
	require.NoError(t, err)
	b.hold("d/x").lose()
	<-l.Done()
	require.True(t, b.idle())
	require.ErrorIs(t, q.Rmdir(ctx, "d"), ErrNotEmpty)
	require.ErrorIs(t, q.Mkdir(ctx, "d/x", DirAttr{}), ErrExist)
	require.NoError(t, l.Release())
	require.NoError(t, q.Mkdir(ctx, "d/x", DirAttr{}))
	require.NoError(t, q.Rmdir(ctx, "d/x"))
	require.NoError(t, q.Rmdir(ctx, "d"))
}

// Acquire and TryAcquire of a name outside the tree fail at once, with
// ErrNoDir or ErrIsDir, and leave nothing queued, also when the name's
// request had to queue behind a backend call in progress.
func TestQueueTreeAcquireOutsideTree(t *testing.T) {
	q, b := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	mkdirs(t, q, "d", "d/sub")
	for _, c := range []struct {
		name string
		want error
	}{{"nodir/x", ErrNoDir}, {"d/nodir/x", ErrNoDir}, {"d/sub", ErrIsDir}, {"d", ErrIsDir}} {
		for _, m := range []Mode{Exclusive, Shared} {
			_, err := q.Acquire(ctx, c.name, m)
			require.ErrorIs(t, err, c.want, "Acquire %q %v", c.name, m)
			_, err = q.TryAcquire(ctx, c.name, m)
			require.ErrorIs(t, err, c.want, "TryAcquire %q %v", c.name, m)
		}
		_, ok := q.Inspect(c.name)
		require.False(t, ok, "%q left behind", c.name)
	}
	// Queued behind a holder of this Queue whose directory then goes
	// away in the backend (by hand): the worker's Lock fails, and so does
	// the waiter, promptly.
	l, err := q.Acquire(ctx, "d/sub/x", Exclusive)
	require.NoError(t, err)
	ch := acquireAsync(ctx, q, "d/sub/x", Exclusive)
	eventually(t, "waiter queued", func() bool { return queued(q, "d/sub/x") == 1 })
	b.mu.Lock()
	delete(b.dirs, "d/sub")
	b.mu.Unlock()
	require.NoError(t, l.Release())
	select {
	case r := <-ch:
		require.ErrorIs(t, r.err, ErrNoDir)
	case <-time.After(timeout):
		t.Fatal("the waiter of a name in a removed directory still waits")
	}
	eventually(t, "nothing left", func() bool { _, ok := q.Inspect("d/sub/x"); return !ok })
	require.Empty(t, q.Snapshot())
}

// Snapshot and Inspect name locks by their full paths; names that share a
// last component are different locks.
func TestQueueTreeFullPaths(t *testing.T) {
	q, _ := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	mkdirs(t, q, "a", "a/b")
	var ls []*Lease
	for _, n := range []string{"x", "a/x", "a/b/x"} {
		l, err := q.TryAcquire(ctx, n, Exclusive)
		require.NoError(t, err, "%q is a lock of its own", n)
		ls = append(ls, l)
	}
	var names []string
	for _, info := range q.Snapshot() {
		names = append(names, info.Name)
	}
	require.Equal(t, []string{"a/b/x", "a/x", "x"}, names)
	info, ok := q.Inspect("a/b/x")
	require.True(t, ok)
	require.Equal(t, "a/b/x", info.Name)
	require.Equal(t, StateHeld, info.State)
	for _, l := range ls {
		require.NoError(t, l.Release())
	}
}

// Tree calls validate paths and refuse after Close.
func TestQueueTreeInvalid(t *testing.T) {
	q, _ := newTestQueue(t, QueueOptions{})
	ctx := testCtx(t)
	for _, p := range []string{"", "/", "a/", "/a", "a//b", ".", "a/..", "a\x00"} {
		require.ErrorIs(t, q.Mkdir(ctx, p, DirAttr{}), ErrInvalidName, "%q", p)
		require.ErrorIs(t, q.Rmdir(ctx, p), ErrInvalidName, "%q", p)
		require.ErrorIs(t, q.SetDirAttr(ctx, p, DirAttr{}), ErrInvalidName, "%q", p)
		if p != "" {
			_, err := q.StatDir(ctx, p)
			require.ErrorIs(t, err, ErrInvalidName, "%q", p)
			_, err = q.ReadDir(ctx, p)
			require.ErrorIs(t, err, ErrInvalidName, "%q", p)
		}
	}
	a, err := q.StatDir(ctx, "")
	require.NoError(t, err)
	require.Zero(t, a, "the root's attributes belong to the mount")
	names, err := q.ReadDir(ctx, "")
	require.NoError(t, err)
	require.Empty(t, names)
	require.NoError(t, q.Close())
	for _, err := range []error{q.Mkdir(ctx, "a", DirAttr{}), q.Rmdir(ctx, "a"), q.SetDirAttr(ctx, "a", DirAttr{})} {
		require.True(t, errors.Is(err, ErrClosed), "%v", err)
	}
}
