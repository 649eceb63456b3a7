package fsnode

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// asUser returns a context whose FUSE caller is uid.
func asUser(uid uint32) context.Context {
	return &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: uid}, Pid: 1}, Cancel: make(chan struct{})}
}

func TestLimitsHeld(t *testing.T) {
	f := newFixture(t)
	f.fsys.lim = newLimiter(Limits{HeldPerUser: 2}, f.fsys.log)
	block := policy{kind: waitBlock}
	var hs []*handle
	for _, name := range []string{"a", "b"} {
		fh, _, errno := f.node(name, block).Open(asUser(1000), syscall.O_WRONLY)
		require.Equal(t, syscall.Errno(0), errno)
		hs = append(hs, fh.(*handle))
	}
	assert.Equal(t, 2, f.fsys.lim.usage(1000).held)
	_, _, errno := f.node("c", block).Open(asUser(1000), syscall.O_WRONLY)
	assert.Equal(t, syscall.ENOLCK, errno, "third lock of uid 1000")
	assert.False(t, f.held("c"))
	assert.Equal(t, uint64(1), f.fsys.lim.refused[kindHeld].Load())

	// Another uid and root still lock.
	fh, _, errno := f.node("c", block).Open(asUser(1001), syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	require.Equal(t, syscall.Errno(0), fh.(*handle).Release(context.Background()))
	fh, _, errno = f.node("d", block).Open(asUser(0), syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	require.Equal(t, syscall.Errno(0), fh.(*handle).Release(context.Background()))

	// A conversion of a held lock is free; a flock on an empty
	// descriptor counts, and its unlock gives the count back.
	lk := &fuse.FileLock{Typ: syscall.F_RDLCK}
	assert.Equal(t, syscall.Errno(0), hs[0].Setlk(asUser(1000), 1, lk, fuse.FUSE_LK_FLOCK))
	e := f.openEmptyCtx(t, asUser(1000), "e", block, syscall.O_RDONLY)
	assert.Equal(t, syscall.ENOLCK, e.Setlk(asUser(1000), 1, &fuse.FileLock{Typ: syscall.F_WRLCK}, fuse.FUSE_LK_FLOCK))
	require.Equal(t, syscall.Errno(0), hs[1].Release(context.Background()))
	assert.Equal(t, 1, f.fsys.lim.usage(1000).held)
	assert.Equal(t, syscall.Errno(0), e.Setlk(asUser(1000), 1, &fuse.FileLock{Typ: syscall.F_WRLCK}, fuse.FUSE_LK_FLOCK))
	assert.Equal(t, 2, f.fsys.lim.usage(1000).held)
	assert.Equal(t, syscall.Errno(0), e.Setlk(asUser(1000), 1, &fuse.FileLock{Typ: syscall.F_UNLCK}, fuse.FUSE_LK_FLOCK))
	assert.Equal(t, 1, f.fsys.lim.usage(1000).held)
	// POSIX locks too, released by close.
	assert.Equal(t, syscall.Errno(0), e.Setlk(asUser(1000), 7, &fuse.FileLock{Typ: syscall.F_WRLCK}, 0))
	assert.Equal(t, 2, f.fsys.lim.usage(1000).held)
	require.Equal(t, syscall.Errno(0), e.Release(context.Background()))
	require.Equal(t, syscall.Errno(0), hs[0].Release(context.Background()))
	assert.Zero(t, f.fsys.lim.usage(1000).held)
	assert.Zero(t, f.fsys.lim.held)
	assert.Empty(t, f.fsys.lim.charged)
}

func TestLimitsHeldTotal(t *testing.T) {
	f := newFixture(t)
	f.fsys.lim = newLimiter(Limits{HeldTotal: 1}, f.fsys.log)
	block := policy{kind: waitBlock}
	fh, _, errno := f.node("a", block).Open(asUser(0), syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	_, _, errno = f.node("b", block).Open(asUser(1000), syscall.O_WRONLY)
	assert.Equal(t, syscall.ENOLCK, errno, "the reserve is root's")
	root, _, errno := f.node("c", block).Open(asUser(0), syscall.O_WRONLY)
	assert.Equal(t, syscall.Errno(0), errno, "root runs on the reserve")
	fh.(*handle).Release(context.Background())
	root.(*handle).Release(context.Background())
}

func TestLimitsWaiting(t *testing.T) {
	f := newFixture(t)
	f.fsys.lim = newLimiter(Limits{WaitingPerUser: 1}, f.fsys.log)
	block := policy{kind: waitBlock}
	h := f.open(t, "x", block, syscall.O_WRONLY)
	ctx, cancel := context.WithCancel(asUser(1000))
	defer cancel()
	res := f.openAsync(ctx, "x", block, syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.fsys.lim.usage(1000).waiting == 1 }, 5*time.Second, time.Millisecond)

	start := time.Now()
	_, _, errno := f.node("x", block).Open(asUser(1000), syscall.O_WRONLY)
	assert.Equal(t, syscall.ENOLCK, errno, "second waiter of uid 1000")
	assert.Less(t, time.Since(start), 10*time.Second, "refused at once, not after a wait")
	e := f.openEmptyCtx(t, asUser(1000), "x", block, syscall.O_RDONLY)
	assert.Equal(t, syscall.ENOLCK, e.Setlkw(asUser(1000), 1, &fuse.FileLock{Typ: syscall.F_WRLCK}, fuse.FUSE_LK_FLOCK))
	assert.Equal(t, 1, f.fsys.lim.usage(1000).held, "only the waiting open reserved a lease")

	// Another uid may wait.
	ctx2, cancel2 := context.WithCancel(asUser(1001))
	res2 := f.openAsync(ctx2, "x", block, syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.waiters("x") == 2 }, 5*time.Second, time.Millisecond)
	cancel2()
	assert.Equal(t, syscall.EINTR, (<-res2).errno)

	require.Equal(t, syscall.Errno(0), h.Release(context.Background()))
	r := <-res
	require.Equal(t, syscall.Errno(0), r.errno)
	u := f.fsys.lim.usage(1000)
	assert.Equal(t, [2]int{1, 0}, [2]int{u.held, u.waiting}, "the wait ended, the lock is held")
	r.fh.(*handle).Release(context.Background())
	e.Release(context.Background())
	u = f.fsys.lim.usage(1000)
	assert.Equal(t, [2]int{0, 0}, [2]int{u.held, u.waiting})
}

func TestLimitsNames(t *testing.T) {
	f := newFixture(t)
	f.fsys.lim = newLimiter(Limits{NamesPerUser: 2}, f.fsys.log)
	none := policy{kind: waitNone}
	a, b, c := f.node("a", none), f.node("b", none), f.node("c", none)
	require.NoError(t, f.fsys.lim.chargeName(asUser(1000), a))
	require.NoError(t, f.fsys.lim.chargeName(asUser(1000), a), "counted once per uid")
	_, _, errno := b.Open(asUser(1000), syscall.O_RDONLY) // an open counts too
	require.Equal(t, syscall.Errno(0), errno)
	assert.Equal(t, 2, f.fsys.lim.usage(1000).names)
	_, _, errno = c.Open(asUser(1000), syscall.O_RDONLY)
	assert.Equal(t, syscall.ENOLCK, errno)
	assert.ErrorIs(t, f.fsys.lim.chargeName(asUser(1000), c), syscall.ENOLCK)
	require.NoError(t, f.fsys.lim.chargeName(asUser(1001), c), "another uid")
	require.NoError(t, f.fsys.lim.chargeName(asUser(0), c), "root")
	a.OnForget()
	a.OnForget() // once only
	assert.Equal(t, 1, f.fsys.lim.usage(1000).names)
	require.NoError(t, f.fsys.lim.chargeName(asUser(1000), c))
	b.OnForget()
	c.OnForget()
	assert.Equal(t, userCount{}, f.fsys.lim.usage(1000))
	assert.Equal(t, userCount{}, f.fsys.lim.usage(1001))
	assert.Empty(t, f.fsys.lim.names)
}

// Without a limiter (the zero Limits) nothing is counted or refused.
func TestLimitsNone(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{kind: waitBlock}, syscall.O_WRONLY)
	assert.Nil(t, f.fsys.lim)
	require.Equal(t, syscall.Errno(0), h.Release(context.Background()))
}
