package fsnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/internal/syncbuf"
	"github.com/lockfs/lockfs/lockengine"
)

// These tests drive the nodes' methods directly, without a mount: Open,
// Read, Write, Fsync and Release do not depend on the go-fuse tree.

// fakeBackend is an in-memory lockengine.Backend: one holder per name, and
// a way to make a hold lost or an attempt fail.
type fakeBackend struct {
	mu      sync.Mutex
	held    map[string]*fakeHold // guarded by mu
	failErr error                // guarded by mu; returned by every attempt when set
	token   uint64               // guarded by mu
}

type fakeHold struct {
	b     *fakeBackend
	name  string
	tok   uint64
	lost  func(error)
	mu    sync.Mutex
	freed bool // guarded by mu
}

func newFakeBackend() *fakeBackend { return &fakeBackend{held: make(map[string]*fakeHold)} }

func (b *fakeBackend) TryLock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failErr != nil {
		return nil, fmt.Errorf("lock %q: %w", name, b.failErr)
	}
	if b.held[name] != nil {
		return nil, fmt.Errorf("lock %q: %w", name, lockengine.ErrWouldBlock)
	}
	b.token++
	h := &fakeHold{b: b, name: name, tok: b.token, lost: lost}
	b.held[name] = h
	return h, nil
}

func (b *fakeBackend) Lock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	for {
		h, err := b.TryLock(ctx, name, mode, lost)
		if !errors.Is(err, lockengine.ErrWouldBlock) {
			return h, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

func (b *fakeBackend) Close() error { return nil }

// lose reports the hold of name lost, as a failing heartbeat would.
func (b *fakeBackend) lose(name string) {
	b.mu.Lock()
	h := b.held[name]
	b.mu.Unlock()
	if h != nil {
		h.lost(fmt.Errorf("%w: test says so", lockengine.ErrLost))
	}
}

func (h *fakeHold) Token() uint64 { return h.tok }

func (h *fakeHold) Valid() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.freed
}

func (h *fakeHold) Bump() (uint64, error) {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	h.b.token++
	return h.b.token, nil
}

func (h *fakeHold) Unlock() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.freed {
		return nil
	}
	h.freed = true
	h.b.mu.Lock()
	if h.b.held[h.name] == h {
		delete(h.b.held, h.name)
	}
	h.b.mu.Unlock()
	return nil
}

type fixture struct {
	b    *fakeBackend
	q    *lockengine.Queue
	fsys *filesystem
	logs *syncbuf.Buffer
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	b := newFakeBackend()
	q := lockengine.NewQueue(b, lockengine.QueueOptions{})
	t.Cleanup(func() { _ = q.Close() })
	logs := &syncbuf.Buffer{}
	lg := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &fixture{b: b, q: q, fsys: &filesystem{eng: q, log: lg, start: time.Now(), rootAttr: lockengine.DirAttr{Mode: DefaultRootMode}}, logs: logs}
}

func (f *fixture) node(name string, p policy) *lockNode {
	return &lockNode{fsys: f.fsys, name: name, policy: p}
}

// open opens name through a node with policy p and returns the handle.
func (f *fixture) open(t *testing.T, name string, p policy, flags uint32) *handle {
	t.Helper()
	fh, fuseFlags, errno := f.node(name, p).Open(context.Background(), flags)
	require.Equal(t, syscall.Errno(0), errno)
	require.NotNil(t, fh)
	assert.Equal(t, uint32(fuse.FOPEN_NOFLUSH|fuse.FOPEN_DIRECT_IO), fuseFlags)
	require.NotNil(t, fh.(*handle).lease(), "the open took the lock")
	return fh.(*handle)
}

// openEmpty opens name through a node with policy p with an open that must
// take nothing, and returns the (empty) handle. Such a handle keeps FLUSH
// (no FOPEN_NOFLUSH) when it can write, so POSIX locks taken through it
// are released on close; a read-only one skips it (see callFlags).
func (f *fixture) openEmpty(t *testing.T, name string, p policy, flags uint32) *handle {
	t.Helper()
	return f.openEmptyCtx(t, context.Background(), name, p, flags)
}

func (f *fixture) openEmptyCtx(t *testing.T, ctx context.Context, name string, p policy, flags uint32) *handle {
	t.Helper()
	fh, fuseFlags, errno := f.node(name, p).Open(ctx, flags)
	require.Equal(t, syscall.Errno(0), errno)
	require.NotNil(t, fh)
	want := uint32(fuse.FOPEN_DIRECT_IO)
	if flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		want |= fuse.FOPEN_NOFLUSH
	}
	assert.Equal(t, want, fuseFlags, "open flags %#o", flags)
	h := fh.(*handle)
	require.Nil(t, h.lease(), "the open took nothing")
	return h
}

type openResult struct {
	fh    fs.FileHandle
	errno syscall.Errno
}

// openAsync starts an Open in a goroutine.
func (f *fixture) openAsync(ctx context.Context, name string, p policy, flags uint32) <-chan openResult {
	res := make(chan openResult, 1)
	go func() {
		fh, _, errno := f.node(name, p).Open(ctx, flags)
		res <- openResult{fh, errno}
	}()
	return res
}

func (f *fixture) waiters(name string) int {
	for _, info := range f.q.Snapshot() {
		if info.Name == name {
			return info.Waiters
		}
	}
	return 0
}

func (f *fixture) held(name string) bool {
	for _, info := range f.q.Snapshot() {
		if info.Name == name {
			return info.Holders > 0
		}
	}
	return false
}

const deadline = 10 * time.Second

func TestOpenWaitsForRelease(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)

	res := f.openAsync(context.Background(), "x", policy{}, syscall.O_RDWR)
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("second exclusive open returned while the first is held: %v", r.errno)
	default:
	}

	require.Equal(t, syscall.Errno(0), h.Release(context.Background()))
	select {
	case r := <-res:
		require.Equal(t, syscall.Errno(0), r.errno)
		require.Equal(t, syscall.Errno(0), r.fh.(*handle).Release(context.Background()))
	case <-time.After(deadline):
		t.Fatal("waiter not granted after release")
	}
	require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
}

func TestSharedOpensShare(t *testing.T) {
	f := newFixture(t)
	shared := policy{kind: waitBlock, shared: true}
	a := f.open(t, "s", shared, syscall.O_RDONLY)
	b := f.open(t, "s", policy{kind: waitTry}, syscall.O_RDONLY)
	// .shared takes the shared lock whatever the access mode.
	c := f.open(t, "s", shared, syscall.O_WRONLY)
	for _, h := range []*handle{a, b, c} {
		assert.Equal(t, lockengine.Shared, h.lease().Mode())
	}
	info, ok := f.q.Inspect("s")
	require.True(t, ok)
	assert.Equal(t, 3, info.Holders)
	assert.Equal(t, lockengine.Shared, info.Mode)
	_, _, errno := f.node("s", policy{kind: waitTry}).Open(context.Background(), syscall.O_WRONLY)
	assert.Equal(t, syscall.EAGAIN, errno, "exclusive try while shared held")
	a.Release(context.Background())
	b.Release(context.Background())
	c.Release(context.Background())
	require.Eventually(t, func() bool { return !f.held("s") }, deadline, time.Millisecond)
}

// A .shared open waits while the name is held exclusively and is granted
// when the holder releases it.
func TestSharedOpenWaits(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "s", policy{}, syscall.O_WRONLY)
	res := f.openAsync(context.Background(), "s", policy{kind: waitBlock, shared: true}, syscall.O_RDONLY)
	require.Eventually(t, func() bool { return f.waiters("s") == 1 }, deadline, time.Millisecond)
	select {
	case r := <-res:
		t.Fatalf("shared open returned while the name is held exclusively: %v", r.errno)
	default:
	}
	require.Equal(t, syscall.Errno(0), h.Release(context.Background()))
	select {
	case r := <-res:
		require.Equal(t, syscall.Errno(0), r.errno)
		sh := r.fh.(*handle)
		assert.Equal(t, lockengine.Shared, sh.lease().Mode())
		sh.Release(context.Background())
	case <-time.After(deadline):
		t.Fatal("shared open not granted after release")
	}
}

// Read-only and O_NONBLOCK opens of M/NAME take nothing: they succeed at
// once whether or not the name is held, hold nothing in the engine, and
// a writer still locks the name while they are open.
func TestRootReadOnlyAndNonblockTakeNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	flagsList := []uint32{
		syscall.O_RDONLY,
		syscall.O_RDONLY | syscall.O_NONBLOCK,
		syscall.O_WRONLY | syscall.O_NONBLOCK,
		syscall.O_RDWR | syscall.O_NONBLOCK,
		syscall.O_WRONLY | syscall.O_APPEND | syscall.O_NONBLOCK,
	}
	var empties []*handle
	for _, flags := range flagsList {
		empties = append(empties, f.openEmpty(t, "x", policy{}, flags))
	}
	_, ok := f.q.Inspect("x")
	assert.False(t, ok, "the engine shows nothing held or waiting")
	assert.False(t, f.held("x"))

	// A writer locks at once, with a try and with a blocking open.
	w := f.open(t, "x", policy{kind: waitTry}, syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), w.Release(ctx))
	res := f.openAsync(ctx, "x", policy{}, syscall.O_WRONLY)
	var w2 *handle
	select {
	case r := <-res:
		require.Equal(t, syscall.Errno(0), r.errno)
		w2 = r.fh.(*handle)
	case <-time.After(deadline):
		t.Fatal("a blocking writer waits behind opens that took nothing")
	}
	info, ok := f.q.Inspect("x")
	require.True(t, ok)
	assert.Equal(t, 1, info.Holders)
	assert.Equal(t, lockengine.Exclusive, info.Mode)

	// While it is held, the same opens still succeed at once and take
	// nothing; their reads are empty, writes and fsync succeed.
	for _, flags := range flagsList {
		h := f.openEmpty(t, "x", policy{}, flags)
		empties = append(empties, h)
		rr, errno := h.Read(ctx, make([]byte, 64), 0)
		require.Equal(t, syscall.Errno(0), errno)
		data, _ := rr.Bytes(make([]byte, 64))
		assert.Empty(t, data, "a handle that holds nothing reads nothing")
		n, errno := h.Write(ctx, []byte("ab"), 0)
		assert.Equal(t, syscall.Errno(0), errno)
		assert.Equal(t, uint32(2), n)
		assert.Equal(t, syscall.Errno(0), h.Fsync(ctx, 0))
	}
	assert.Equal(t, 0, f.waiters("x"))
	info, _ = f.q.Inspect("x")
	assert.Equal(t, 1, info.Holders)

	// Releasing them leaves the writer's lock alone.
	for _, h := range empties {
		require.Equal(t, syscall.Errno(0), h.Release(ctx))
	}
	assert.True(t, f.held("x"))
	assert.Nil(t, w2.lease().Err())
	require.Equal(t, syscall.Errno(0), w2.Release(ctx))
	require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
}

// Opens of M/.flock/NAME never take anything, whatever the flags.
func TestFlockDirOpenTakesNothing(t *testing.T) {
	f := newFixture(t)
	w := f.open(t, "x", policy{}, syscall.O_WRONLY)
	for _, flags := range []uint32{syscall.O_RDONLY, syscall.O_WRONLY, syscall.O_RDWR | syscall.O_TRUNC, syscall.O_WRONLY | syscall.O_NONBLOCK} {
		h := f.openEmpty(t, "x", policy{kind: waitNone}, flags)
		require.Equal(t, syscall.Errno(0), h.Release(context.Background()))
	}
	info, _ := f.q.Inspect("x")
	assert.Equal(t, 1, info.Holders)
	assert.Equal(t, 0, info.Waiters)
	w.Release(context.Background())
}

// A signal to a waiting opener cancels ctx: Open returns EINTR and leaves
// no waiter and no lease behind.
func TestOpenInterrupted(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)

	ctx, cancel := context.WithCancel(context.Background())
	res := f.openAsync(ctx, "x", policy{}, syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	cancel()
	select {
	case r := <-res:
		assert.Equal(t, syscall.EINTR, r.errno)
		assert.Nil(t, r.fh)
	case <-time.After(deadline):
		t.Fatal("interrupted open did not return")
	}
	assert.Equal(t, 0, f.waiters("x"))

	h.Release(context.Background())
	// Nothing leaked: the name is free for a try-lock.
	require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
	h2 := f.open(t, "x", policy{kind: waitTry}, syscall.O_WRONLY)
	h2.Release(context.Background())
	assert.Contains(t, f.logs.String(), `msg="open failed" lock=x mode=exclusive errno=EINTR`)
}

func TestTryAndNonblock(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	defer h.Release(context.Background())

	for _, c := range []struct {
		p     policy
		flags uint32
	}{
		{policy{kind: waitTry}, syscall.O_WRONLY},
		{policy{kind: waitTry}, syscall.O_RDONLY},
		{policy{kind: waitTry}, syscall.O_WRONLY | syscall.O_NONBLOCK},
		{policy{kind: waitBlock, shared: true}, syscall.O_RDONLY | syscall.O_NONBLOCK},
		{policy{kind: waitBlock, shared: true}, syscall.O_WRONLY | syscall.O_NONBLOCK},
		{policy{kind: waitTimeout, timeout: time.Hour}, syscall.O_RDONLY | syscall.O_NONBLOCK},
		{timeoutPolicy(0), syscall.O_WRONLY},
	} {
		fh, _, errno := f.node("x", c.p).Open(context.Background(), c.flags)
		assert.Equal(t, syscall.EAGAIN, errno, "%v flags %#x", c.p, c.flags)
		assert.Nil(t, fh)
	}
	assert.Equal(t, 0, f.waiters("x"))
}

func TestTimeout(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	defer h.Release(context.Background())

	start := time.Now()
	fh, _, errno := f.node("x", timeoutPolicy(20*time.Millisecond)).Open(context.Background(), syscall.O_WRONLY)
	assert.Equal(t, syscall.EAGAIN, errno)
	assert.Nil(t, fh)
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
	assert.Equal(t, 0, f.waiters("x"))

	// A signal during a timed wait is EINTR, not EAGAIN.
	ctx, cancel := context.WithCancel(context.Background())
	res := f.openAsync(ctx, "x", timeoutPolicy(time.Hour), syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	cancel()
	r := <-res
	assert.Equal(t, syscall.EINTR, r.errno)
}

func TestTimeoutGranted(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	res := f.openAsync(context.Background(), "x", timeoutPolicy(time.Hour), syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	h.Release(context.Background())
	r := <-res
	require.Equal(t, syscall.Errno(0), r.errno)
	r.fh.(*handle).Release(context.Background())
}

func TestHandleIOAndLoss(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_RDWR)
	ctx := context.Background()

	n, errno := h.Write(ctx, []byte("hello"), 0)
	assert.Equal(t, syscall.Errno(0), errno)
	assert.Equal(t, uint32(5), n)
	n, errno = h.Writev(ctx, [][]byte{[]byte("ab"), []byte("cde")}, 5)
	assert.Equal(t, syscall.Errno(0), errno)
	assert.Equal(t, uint32(5), n)
	rr, errno := h.Read(ctx, make([]byte, 256), 0)
	require.Equal(t, syscall.Errno(0), errno)
	data, _ := rr.Bytes(make([]byte, 256))
	first, rest, _ := strings.Cut(string(data), "\n")
	assert.Equal(t, strconv.FormatUint(h.lease().Token(), 10), first, "line 1 is the token")
	assert.Contains(t, rest, "name=x mode=exclusive token=")
	rr, errno = h.Read(ctx, make([]byte, 16), int64(len(data)))
	require.Equal(t, syscall.Errno(0), errno)
	data, _ = rr.Bytes(make([]byte, 16))
	assert.Empty(t, data, "EOF after the record")
	assert.Equal(t, syscall.Errno(0), h.Fsync(ctx, 0))

	f.b.lose("x")
	require.Eventually(t, func() bool { return h.lease().Err() != nil }, deadline, time.Millisecond)
	_, errno = h.Write(ctx, []byte("x"), 0)
	assert.Equal(t, syscall.EIO, errno)
	_, errno = h.Writev(ctx, [][]byte{[]byte("x")}, 0)
	assert.Equal(t, syscall.EIO, errno)
	_, errno = h.Read(ctx, make([]byte, 16), 0)
	assert.Equal(t, syscall.EIO, errno)
	assert.Equal(t, syscall.EIO, h.Fsync(ctx, 0))
	assert.Contains(t, f.logs.String(), `level=WARN msg="write failed: lock no longer held" lock=x mode=exclusive`)

	// The name is free again for others; releasing the lost handle is fine.
	h2 := f.open(t, "x", policy{kind: waitTry}, syscall.O_WRONLY)
	assert.Equal(t, syscall.Errno(0), h.Release(ctx))
	assert.True(t, f.held("x"), "releasing a lost lease must not release the new holder")
	h2.Release(ctx)
}

func TestReleaseTwiceIsLoggedOnce(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	ctx := context.Background()
	assert.Equal(t, syscall.Errno(0), h.Release(ctx))
	h2 := f.open(t, "x", policy{kind: waitTry}, syscall.O_WRONLY)
	assert.Equal(t, syscall.Errno(0), h.Release(ctx))
	assert.True(t, f.held("x"), "a second Release must not touch the next holder")
	assert.Contains(t, f.logs.String(), "bug: lock file handle released twice")
	h2.Release(ctx)
}

func TestOpenEngineFailure(t *testing.T) {
	f := newFixture(t)
	f.b.mu.Lock()
	f.b.failErr = fmt.Errorf("open locks/x: %w", syscall.EROFS)
	f.b.mu.Unlock()
	_, _, errno := f.node("x", policy{}).Open(context.Background(), syscall.O_WRONLY)
	assert.Equal(t, syscall.EROFS, errno)
	assert.Contains(t, f.logs.String(), `level=ERROR msg="open failed" lock=x mode=exclusive errno=EROFS`)

	f.b.mu.Lock()
	f.b.failErr = errors.New("disk on fire")
	f.b.mu.Unlock()
	_, _, errno = f.node("x", policy{kind: waitBlock, shared: true}).Open(context.Background(), syscall.O_RDONLY)
	assert.Equal(t, syscall.EIO, errno)
	assert.Contains(t, f.logs.String(), `level=ERROR msg="open failed" lock=x mode=shared errno=EIO`)
	assert.False(t, f.held("x"))

	// An open that takes nothing does not ask the backend, so it succeeds.
	h := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	assert.False(t, f.held("x"))
	h.Release(context.Background())
}

func TestOpenAfterEngineClose(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	res := f.openAsync(context.Background(), "x", policy{}, syscall.O_WRONLY)
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	require.NoError(t, f.q.Close())
	r := <-res
	assert.Equal(t, syscall.EIO, r.errno, "waiters fail when the engine closes")
	_, errno := h.Write(context.Background(), []byte("x"), 0)
	assert.Equal(t, syscall.EIO, errno, "holders fail when the engine closes")
	assert.Equal(t, syscall.Errno(0), h.Release(context.Background()))
}

func TestAttributes(t *testing.T) {
	f := newFixture(t)
	var out fuse.AttrOut
	require.Equal(t, syscall.Errno(0), f.node("x", policy{}).Getattr(context.Background(), nil, &out))
	assert.Equal(t, uint32(syscall.S_IFREG|0o666), out.Mode)
	assert.Equal(t, uint64(0), out.Size)
	var sout fuse.AttrOut
	in := &fuse.SetAttrIn{}
	in.Valid = fuse.FATTR_SIZE
	in.Size = 100
	require.Equal(t, syscall.Errno(0), f.node("x", policy{}).Setattr(context.Background(), nil, in, &sout))
	assert.Equal(t, uint64(0), sout.Size, "the file stays empty")
}

func TestOpenRecordsOwner(t *testing.T) {
	f := newFixture(t)
	ctx := &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: 1000, Gid: 100}, Pid: 4242}, Cancel: make(chan struct{})}
	fh, _, errno := f.node("o", policy{}).Open(ctx, syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	h := fh.(*handle)
	assert.Equal(t, lockengine.Owner{UID: 1000, GID: 100, PID: 4242, Via: lockengine.ViaOpen}, h.lease().Owner())
	info, ok := f.q.Inspect("o")
	require.True(t, ok)
	require.Len(t, info.Leases, 1)
	assert.Equal(t, lockengine.ViaOpen, info.Leases[0].Owner.Via)
	h.Release(context.Background())
}

// The fake backend keeps only the root directory.

func (b *fakeBackend) StatDir(ctx context.Context, path string) (lockengine.DirAttr, error) {
	return lockengine.DirAttr{}, fmt.Errorf("%w: %s", lockengine.ErrNoDir, path)
}

func (b *fakeBackend) Mkdir(ctx context.Context, path string, attr lockengine.DirAttr) error {
	return fmt.Errorf("%w: %s", syscall.EPERM, path)
}

func (b *fakeBackend) Rmdir(ctx context.Context, path string) error {
	return fmt.Errorf("%w: %s", lockengine.ErrNoDir, path)
}

func (b *fakeBackend) SetDirAttr(ctx context.Context, path string, attr lockengine.DirAttr) error {
	return fmt.Errorf("%w: %s", lockengine.ErrNoDir, path)
}

func (b *fakeBackend) ReadDir(ctx context.Context, path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	return nil, fmt.Errorf("%w: %s", lockengine.ErrNoDir, path)
}
