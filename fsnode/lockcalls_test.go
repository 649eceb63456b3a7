package fsnode

import (
	"context"
	"math"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// These tests call the lock call methods of handles (Setlk, Setlkw, Getlk,
// Flush, Release) as go-fuse's bridge does: with a *fuse.Context that
// carries the caller and a cancel channel that FUSE_INTERRUPT closes.

// caller is a FUSE caller whose request can be interrupted.
type caller struct {
	ctx    *fuse.Context
	cancel chan struct{}
}

func newCaller(uid, gid, pid uint32) caller {
	c := make(chan struct{})
	return caller{ctx: &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}, Pid: pid}, Cancel: c}, cancel: c}
}

// interrupt is what FUSE_INTERRUPT does to the request.
func (c caller) interrupt() { close(c.cancel) }

// lockCall is one lock call: flock(2) when flock is set, else a POSIX
// record lock of owner.
type lockCall struct {
	owner uint64
	typ   uint32
	flock bool
}

func (c lockCall) lk() *fuse.FileLock {
	return &fuse.FileLock{Typ: c.typ, End: math.MaxInt64}
}

func (c lockCall) flags() uint32 {
	if c.flock {
		return fuse.FUSE_LK_FLOCK
	}
	return 0
}

// flockOwner is the lock owner the kernel passes with flock calls (the
// open file description); lockfs ignores it for flock.
const flockOwner = 0xf10c

func flockCall(typ uint32) lockCall               { return lockCall{owner: flockOwner, typ: typ, flock: true} }
func posixCall(owner uint64, typ uint32) lockCall { return lockCall{owner: owner, typ: typ} }

// setlk makes c without waiting (LOCK_NB, F_SETLK) with a caller of pid.
func setlk(h *handle, pid uint32, c lockCall) syscall.Errno {
	return h.Setlk(newCaller(1000, 100, pid).ctx, c.owner, c.lk(), c.flags())
}

// setlkw makes c, waiting (F_SETLKW, blocking flock) at most deadline:
// a call that should not wait but does fails the test instead of hanging.
func setlkw(h *handle, pid uint32, c lockCall) syscall.Errno {
	ctx, cancel := context.WithTimeout(newCaller(1000, 100, pid).ctx, deadline)
	defer cancel()
	return h.Setlkw(ctx, c.owner, c.lk(), c.flags())
}

// setlkwAsync starts a blocking call with caller cl in a goroutine.
func setlkwAsync(h *handle, cl caller, c lockCall) <-chan syscall.Errno {
	res := make(chan syscall.Errno, 1)
	go func() { res <- h.Setlkw(cl.ctx, c.owner, c.lk(), c.flags()) }()
	return res
}

// waitErrno returns the result of an asynchronous call, failing the test
// when it does not come within deadline.
func waitErrno(t *testing.T, res <-chan syscall.Errno, what string) syscall.Errno {
	t.Helper()
	select {
	case e := <-res:
		return e
	case <-time.After(deadline):
		t.Fatalf("%s: no answer within %v", what, deadline)
		return 0
	}
}

// notYet checks that an asynchronous call has not returned.
func notYet(t *testing.T, res <-chan syscall.Errno, what string) {
	t.Helper()
	select {
	case e := <-res:
		t.Fatalf("%s returned (%v) while it should wait", what, e)
	default:
	}
}

func getlk(t *testing.T, h *handle, owner uint64, typ uint32) fuse.FileLock {
	t.Helper()
	var out fuse.FileLock
	require.Equal(t, syscall.Errno(0), h.Getlk(newCaller(1000, 100, 1).ctx, owner, &fuse.FileLock{Typ: typ, End: math.MaxInt64}, 0, &out))
	return out
}

// flush runs h's Flush as the FLUSH of lock owner owner: like rawFS.Flush,
// it records the owner under the request's cancel channel for the call.
func (f *fixture) flush(h *handle, owner uint64) syscall.Errno {
	cl := newCaller(1000, 100, 1)
	f.fsys.flushOwners.Store(cl.ctx.Cancel, owner)
	defer f.fsys.flushOwners.Delete(cl.ctx.Cancel)
	return h.Flush(cl.ctx)
}

// inspect returns the engine's view of name.
func (f *fixture) inspect(name string) lockengine.LockInfo {
	info, _ := f.q.Inspect(name)
	return info
}

// readRecord reads the holder record through h ("" when it holds nothing).
func readRecord(t *testing.T, h *handle) string {
	t.Helper()
	rr, errno := h.Read(context.Background(), make([]byte, 512), 0)
	require.Equal(t, syscall.Errno(0), errno)
	data, _ := rr.Bytes(make([]byte, 512))
	return string(data)
}

// posixEntries counts the POSIX lock table's entries and descriptors.
func (f *fixture) posixEntries() (keys, vias int) {
	f.fsys.posixMu.Lock()
	defer f.fsys.posixMu.Unlock()
	return len(f.fsys.posix), len(f.fsys.posixByVia)
}

func TestFlockOnEmptyHandle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_WRONLY)
	b := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)

	require.Equal(t, syscall.Errno(0), setlk(a, 11, flockCall(syscall.F_WRLCK)), "flock EX|NB on a free name")
	la := a.slot.Lease()
	require.NotNil(t, la)
	assert.Equal(t, lockengine.Exclusive, la.Mode())
	info := f.inspect("x")
	assert.Equal(t, lockengine.StateHeld, info.State)
	require.Len(t, info.Leases, 1)
	assert.Equal(t, lockengine.Owner{UID: 1000, GID: 100, PID: 11, Via: lockengine.ViaFlock}, info.Leases[0].Owner)

	assert.Equal(t, syscall.EAGAIN, setlk(b, 12, flockCall(syscall.F_WRLCK)), "second handle's flock EX|NB")
	assert.Equal(t, syscall.EAGAIN, setlk(b, 12, flockCall(syscall.F_RDLCK)), "second handle's flock SH|NB")
	assert.Nil(t, b.slot.Lease())
	assert.Equal(t, 0, f.waiters("x"))

	// A blocking flock waits, and is granted on LOCK_UN.
	res := setlkwAsync(b, newCaller(1000, 100, 12), flockCall(syscall.F_WRLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "blocking flock while held")
	require.Equal(t, syscall.Errno(0), setlk(a, 11, flockCall(syscall.F_UNLCK)))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "blocking flock after LOCK_UN"))
	assert.Nil(t, a.slot.Lease())
	require.NotNil(t, b.slot.Lease())
	assert.Equal(t, syscall.Errno(0), setlk(a, 11, flockCall(syscall.F_UNLCK)), "LOCK_UN without a lock")

	// And on the holder's Release.
	res = setlkwAsync(a, newCaller(1000, 100, 11), flockCall(syscall.F_WRLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "blocking flock while held")
	require.Equal(t, syscall.Errno(0), b.Release(ctx))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "blocking flock after Release"))
	require.NotNil(t, a.slot.Lease())
	assert.Equal(t, 1, f.inspect("x").Holders)

	require.Equal(t, syscall.Errno(0), a.Release(ctx))
	require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
}

// An interrupted blocking lock call ends with EINTR and leaves nothing
// queued or held.
func TestSetlkwInterrupted(t *testing.T) {
	for _, c := range []lockCall{flockCall(syscall.F_WRLCK), flockCall(syscall.F_RDLCK), posixCall(7, syscall.F_WRLCK), posixCall(7, syscall.F_RDLCK)} {
		t.Run(strconv.FormatBool(c.flock)+"/"+strconv.Itoa(int(c.typ)), func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			holder := f.open(t, "x", policy{}, syscall.O_WRONLY)
			b := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)

			cl := newCaller(1000, 100, 12)
			res := setlkwAsync(b, cl, c)
			require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
			notYet(t, res, "blocking call while held")
			cl.interrupt()
			assert.Equal(t, syscall.EINTR, waitErrno(t, res, "interrupted call"))
			info := f.inspect("x")
			assert.Equal(t, 0, info.Waiters)
			assert.Empty(t, info.Waiting)
			assert.Equal(t, 1, info.Holders)
			assert.Nil(t, b.lease())

			// Nothing was left behind: once the holder is gone the
			// name is free, and b can lock it again.
			require.Equal(t, syscall.Errno(0), holder.Release(ctx))
			require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
			require.Equal(t, syscall.Errno(0), setlk(b, 12, c))
			require.NotNil(t, b.lease())
			require.Equal(t, syscall.Errno(0), b.Release(ctx))
			require.Eventually(t, func() bool { return !f.held("x") }, deadline, time.Millisecond)
			k, v := f.posixEntries()
			assert.Zero(t, k+v, "POSIX table empty after Release")
		})
	}
}

func TestFlockConversions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	b := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	c := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	defer func() {
		for _, h := range []*handle{a, b, c} {
			h.Release(ctx)
		}
	}()

	require.Equal(t, syscall.Errno(0), setlk(a, 1, flockCall(syscall.F_RDLCK)))
	require.Equal(t, syscall.Errno(0), setlk(b, 2, flockCall(syscall.F_RDLCK)))
	assert.Equal(t, 2, f.inspect("x").Holders)

	// Same mode: a no-op that keeps the lease.
	la := a.slot.Lease()
	require.Equal(t, syscall.Errno(0), setlk(a, 1, flockCall(syscall.F_RDLCK)))
	assert.Same(t, la, a.slot.Lease())
	require.Equal(t, syscall.Errno(0), setlkw(a, 1, flockCall(syscall.F_RDLCK)))
	assert.Same(t, la, a.slot.Lease())

	// SH -> EX|NB while another shared holder is in: the shared lock is
	// given up and the try fails, as flock(2) does.
	assert.Equal(t, syscall.EAGAIN, setlk(a, 1, flockCall(syscall.F_WRLCK)))
	assert.Nil(t, a.slot.Lease(), "a failed upgrade leaves the handle without a lock")
	assert.Equal(t, 1, f.inspect("x").Holders)

	// SH -> EX blocking: waits for the other shared holder.
	require.Equal(t, syscall.Errno(0), setlk(a, 1, flockCall(syscall.F_RDLCK)))
	res := setlkwAsync(a, newCaller(1000, 100, 1), flockCall(syscall.F_WRLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "upgrade while another shared holder is in")
	assert.Nil(t, a.slot.Lease(), "the upgrade gave the shared lock up")
	require.Equal(t, syscall.Errno(0), setlk(b, 2, flockCall(syscall.F_UNLCK)))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "upgrade"))
	require.NotNil(t, a.slot.Lease())
	assert.Equal(t, lockengine.Exclusive, a.slot.Lease().Mode())

	// EX -> SH: a downgrade in place (same grant, same token) that lets
	// a queued shared request in at once.
	tok := a.slot.Lease().Token()
	res = setlkwAsync(c, newCaller(1000, 100, 3), flockCall(syscall.F_RDLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "shared request while held exclusively")
	require.Equal(t, syscall.Errno(0), setlk(a, 1, flockCall(syscall.F_RDLCK)))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "shared request after the downgrade"))
	require.NotNil(t, a.slot.Lease())
	assert.Equal(t, lockengine.Shared, a.slot.Lease().Mode())
	assert.Equal(t, tok, a.slot.Lease().Token(), "the downgrade keeps the grant")
	info := f.inspect("x")
	assert.Equal(t, 2, info.Holders)
	assert.Equal(t, lockengine.Shared, info.Mode)
	assert.Equal(t, 0, info.Waiters)
	// An exclusive try by the third handle fails while both share.
	assert.Equal(t, syscall.EAGAIN, setlk(b, 2, flockCall(syscall.F_WRLCK)))

	// A lock type that is neither F_RDLCK, F_WRLCK nor F_UNLCK is EINVAL.
	assert.Equal(t, syscall.EINVAL, setlk(b, 2, flockCall(99)))
}

// A lock call through a descriptor acts on the lock that descriptor holds:
// one whose open took the exclusive lock never waits for itself.
func TestLockCallsOnOpenLease(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h := f.open(t, "x", policy{}, syscall.O_WRONLY)
	other := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	defer other.Release(ctx)
	lease := h.lease()

	require.Equal(t, syscall.Errno(0), setlkw(h, 1, flockCall(syscall.F_WRLCK)), "flock EX")
	require.Equal(t, syscall.Errno(0), setlk(h, 1, flockCall(syscall.F_WRLCK)), "flock EX|NB")
	require.Equal(t, syscall.Errno(0), setlkw(h, 1, posixCall(5, syscall.F_WRLCK)), "F_SETLKW F_WRLCK")
	require.Equal(t, syscall.Errno(0), setlk(h, 1, posixCall(6, syscall.F_WRLCK)), "F_SETLK F_WRLCK")
	assert.Same(t, lease, h.slot.Lease(), "same mode: the open's lease stays")
	k, v := f.posixEntries()
	assert.Zero(t, k+v, "POSIX calls acted on the descriptor's lock")
	assert.Equal(t, 1, f.inspect("x").Holders)
	assert.Equal(t, 0, f.waiters("x"))

	// flock SH: a downgrade in place; another shared request gets in.
	require.Equal(t, syscall.Errno(0), setlkw(h, 1, flockCall(syscall.F_RDLCK)), "flock SH")
	require.NotNil(t, h.slot.Lease())
	assert.Equal(t, lockengine.Shared, h.slot.Lease().Mode())
	assert.Equal(t, lease.Token(), h.slot.Lease().Token())
	require.Equal(t, syscall.Errno(0), setlk(other, 2, flockCall(syscall.F_RDLCK)))
	assert.Equal(t, 2, f.inspect("x").Holders)
	require.Equal(t, syscall.Errno(0), setlk(other, 2, flockCall(syscall.F_UNLCK)))

	// Back to exclusive through a POSIX call on the descriptor.
	require.Equal(t, syscall.Errno(0), setlkw(h, 1, posixCall(5, syscall.F_WRLCK)))
	require.NotNil(t, h.slot.Lease())
	assert.Equal(t, lockengine.Exclusive, h.slot.Lease().Mode())

	// LOCK_UN releases the open's lock: another handle can lock.
	require.Equal(t, syscall.Errno(0), setlk(h, 1, flockCall(syscall.F_UNLCK)))
	assert.Nil(t, h.lease())
	assert.False(t, f.held("x"))
	assert.Equal(t, "", readRecord(t, h), "nothing held, nothing to read")
	require.Equal(t, syscall.Errno(0), setlk(other, 2, flockCall(syscall.F_WRLCK)))

	// A later flock takes it again once the other handle lets go.
	res := setlkwAsync(h, newCaller(1000, 100, 1), flockCall(syscall.F_WRLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "re-take while another handle holds")
	require.Equal(t, syscall.Errno(0), setlk(other, 2, flockCall(syscall.F_UNLCK)))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "re-take"))
	require.NotNil(t, h.slot.Lease())
	info := f.inspect("x")
	require.Len(t, info.Leases, 1)
	assert.Equal(t, lockengine.ViaFlock, info.Leases[0].Owner.Via)

	// F_UNLCK through the descriptor releases it too.
	require.Equal(t, syscall.Errno(0), setlk(h, 1, posixCall(5, syscall.F_UNLCK)))
	assert.False(t, f.held("x"))
	require.Equal(t, syscall.Errno(0), h.Release(ctx))
}

// POSIX locks belong to the lock owner: calls of one owner through two
// descriptors act on one lock, different owners conflict.
func TestPosixOwners(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h1 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	h2 := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	defer h1.Release(ctx)
	defer h2.Release(ctx)

	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_RDLCK)))
	// The same owner through the other descriptor: a conversion of the
	// same lock, which must not wait for itself.
	require.Equal(t, syscall.Errno(0), setlkw(h2, 100, posixCall(1, syscall.F_WRLCK)))
	info := f.inspect("x")
	require.Len(t, info.Leases, 1, "one lock for the owner")
	assert.Equal(t, lockengine.Exclusive, info.Mode)
	assert.Equal(t, lockengine.Owner{UID: 1000, GID: 100, PID: 100, Via: lockengine.ViaPOSIX}, info.Leases[0].Owner)
	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_WRLCK)), "same mode again")
	assert.Equal(t, 1, f.inspect("x").Holders)

	// Another owner conflicts, through either descriptor.
	assert.Equal(t, syscall.EAGAIN, setlk(h1, 200, posixCall(2, syscall.F_RDLCK)))
	assert.Equal(t, syscall.EAGAIN, setlk(h2, 200, posixCall(2, syscall.F_WRLCK)))
	res := setlkwAsync(h2, newCaller(1000, 100, 200), posixCall(2, syscall.F_WRLCK))
	require.Eventually(t, func() bool { return f.waiters("x") == 1 }, deadline, time.Millisecond)
	notYet(t, res, "another owner's F_SETLKW")

	// Owner 1 unlocks through the descriptor it did not lock through.
	require.Equal(t, syscall.Errno(0), setlk(h2, 100, posixCall(1, syscall.F_UNLCK)))
	require.Equal(t, syscall.Errno(0), waitErrno(t, res, "F_SETLKW after the other owner's F_UNLCK"))
	info = f.inspect("x")
	require.Len(t, info.Leases, 1)
	assert.Equal(t, uint32(200), info.Leases[0].Owner.PID)

	// Shared POSIX locks of two owners share.
	require.Equal(t, syscall.Errno(0), setlk(h2, 200, posixCall(2, syscall.F_RDLCK)), "downgrade")
	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_RDLCK)))
	assert.Equal(t, 2, f.inspect("x").Holders)
}

func TestFlushReleasesOwnersPosixLock(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	other := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	defer h.Release(ctx)
	defer other.Release(ctx)

	require.Equal(t, syscall.Errno(0), setlk(h, 100, posixCall(1, syscall.F_WRLCK)))
	// A FLUSH without a recorded owner, or by another owner, or of
	// another name, releases nothing.
	assert.Equal(t, syscall.Errno(0), h.Flush(ctx))
	assert.Equal(t, syscall.Errno(0), h.Flush(newCaller(1000, 100, 100).ctx))
	assert.Equal(t, syscall.Errno(0), f.flush(h, 2))
	y := f.openEmpty(t, "y", policy{}, syscall.O_RDONLY)
	assert.Equal(t, syscall.Errno(0), f.flush(y, 1))
	y.Release(ctx)
	assert.True(t, f.held("x"))

	// The owner closes any descriptor of the name (here not the one it
	// locked through): its lock is released.
	require.Equal(t, syscall.Errno(0), f.flush(other, 1))
	assert.False(t, f.held("x"))
	k, v := f.posixEntries()
	assert.Zero(t, k+v, "the owner's entry is gone")
	require.Equal(t, syscall.Errno(0), setlk(other, 200, posixCall(2, syscall.F_WRLCK)), "another owner locks")
	require.Equal(t, syscall.Errno(0), f.flush(h, 2))
	assert.False(t, f.held("x"))

	// A FLUSH does not touch a flock lock on the descriptor.
	require.Equal(t, syscall.Errno(0), setlk(h, 100, flockCall(syscall.F_WRLCK)))
	require.Equal(t, syscall.Errno(0), f.flush(h, 1))
	require.Equal(t, syscall.Errno(0), f.flush(h, flockOwner))
	assert.True(t, f.held("x"))
	assert.NotNil(t, h.slot.Lease())
}

func TestReleaseDropsPosixLocksTakenThroughIt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h1 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	h2 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	h3 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	defer h3.Release(ctx)

	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_RDLCK)))
	require.Equal(t, syscall.Errno(0), setlk(h1, 200, posixCall(2, syscall.F_RDLCK)))
	require.Equal(t, syscall.Errno(0), setlk(h2, 300, posixCall(3, syscall.F_RDLCK)))
	assert.Equal(t, 3, f.inspect("x").Holders)

	// Releasing h2 drops owner 3's lock only.
	require.Equal(t, syscall.Errno(0), h2.Release(ctx))
	info := f.inspect("x")
	assert.Equal(t, 2, info.Holders)
	for _, l := range info.Leases {
		assert.NotEqual(t, uint32(300), l.Owner.PID)
	}
	// Releasing h1 drops both locks taken through it.
	require.Equal(t, syscall.Errno(0), h1.Release(ctx))
	assert.False(t, f.held("x"))
	k, v := f.posixEntries()
	assert.Zero(t, k+v)
	require.Equal(t, syscall.Errno(0), setlk(h3, 400, posixCall(4, syscall.F_WRLCK)))
}

func TestGetlk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h1 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	h2 := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	defer h1.Release(ctx)
	defer h2.Release(ctx)

	for _, typ := range []uint32{syscall.F_RDLCK, syscall.F_WRLCK} {
		assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h1, 1, typ), "free")
	}
	assert.False(t, f.held("x"), "F_GETLK takes nothing")

	require.Equal(t, syscall.Errno(0), setlk(h1, 4242, posixCall(1, syscall.F_WRLCK)))
	want := fuse.FileLock{Typ: syscall.F_WRLCK, Start: 0, End: math.MaxInt64, Pid: 4242}
	assert.Equal(t, want, getlk(t, h2, 2, syscall.F_RDLCK), "another owner's exclusive lock")
	assert.Equal(t, want, getlk(t, h1, 2, syscall.F_WRLCK), "through the holder's descriptor too")
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h2, 1, syscall.F_WRLCK), "the caller's own lock")
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h1, 1, syscall.F_RDLCK), "the caller's own lock")

	// Shared holders conflict with F_WRLCK only.
	require.Equal(t, syscall.Errno(0), setlk(h1, 4242, posixCall(1, syscall.F_RDLCK)))
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h2, 2, syscall.F_RDLCK))
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_RDLCK, End: math.MaxInt64, Pid: 4242}, getlk(t, h2, 2, syscall.F_WRLCK))
	require.Equal(t, syscall.Errno(0), setlk(h2, 77, posixCall(2, syscall.F_RDLCK)))
	got := getlk(t, h2, 2, syscall.F_WRLCK)
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_RDLCK, End: math.MaxInt64, Pid: 4242}, got, "the other owner's shared lock, not the caller's own")
	require.Equal(t, syscall.Errno(0), setlk(h1, 4242, posixCall(1, syscall.F_UNLCK)))
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h2, 2, syscall.F_WRLCK), "only the caller holds it")
	require.Equal(t, syscall.Errno(0), setlk(h2, 77, posixCall(2, syscall.F_UNLCK)))

	// A descriptor's open lock is the descriptor's own for POSIX calls
	// through it, and another's for other descriptors.
	h3 := f.open(t, "x", policy{}, syscall.O_WRONLY)
	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h3, 9, syscall.F_WRLCK))
	got = getlk(t, h2, 9, syscall.F_RDLCK)
	assert.Equal(t, uint32(syscall.F_WRLCK), got.Typ)
	h3.Release(ctx)

	var out fuse.FileLock
	assert.Equal(t, syscall.EINVAL, h1.Getlk(ctx, 1, &fuse.FileLock{Typ: syscall.F_UNLCK}, 0, &out))
}

// Holders record the interface that took them: open, flock or posix.
func TestViaRecorded(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	n := f.node("x", policy{})
	holders := func() string {
		v, errno := getxattr(t, n, XattrHolders)
		require.Equal(t, syscall.Errno(0), errno)
		return v
	}

	o := f.open(t, "x", policy{kind: waitBlock, shared: true}, syscall.O_RDONLY)
	fl := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDONLY)
	px := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	require.Equal(t, syscall.Errno(0), setlk(fl, 21, flockCall(syscall.F_RDLCK)))
	require.Equal(t, syscall.Errno(0), setlk(px, 22, posixCall(3, syscall.F_RDLCK)))

	vias := map[lockengine.Via]int{}
	for _, l := range f.inspect("x").Leases {
		vias[l.Owner.Via]++
	}
	assert.Equal(t, map[lockengine.Via]int{lockengine.ViaOpen: 1, lockengine.ViaFlock: 1, lockengine.ViaPOSIX: 1}, vias)
	lines := strings.Split(strings.TrimSuffix(holders(), "\n"), "\n")
	require.Len(t, lines, 3)
	var got []string
	for _, line := range lines {
		fields := strings.Fields(line)
		require.Len(t, fields, 7, line)
		got = append(got, fields[2]+" "+fields[6])
	}
	assert.ElementsMatch(t, []string{"0 open", "21 flock", "22 posix"}, got)

	// A conversion that takes the name anew records the interface of
	// the call that made it; a downgrade in place keeps the grant and its
	// owner.
	o.Release(ctx)
	require.Equal(t, syscall.Errno(0), setlk(fl, 21, flockCall(syscall.F_UNLCK)))
	require.Equal(t, syscall.Errno(0), setlk(px, 23, posixCall(3, syscall.F_WRLCK)))
	assert.True(t, strings.HasSuffix(holders(), " posix\n"), holders())
	posixOwner := lockengine.Owner{UID: 1000, GID: 100, PID: 23, Via: lockengine.ViaPOSIX}
	require.Equal(t, syscall.Errno(0), setlk(px, 24, flockCall(syscall.F_RDLCK)))
	info := f.inspect("x")
	require.Len(t, info.Leases, 1)
	assert.Equal(t, lockengine.Shared, info.Leases[0].Mode)
	assert.Equal(t, posixOwner, info.Leases[0].Owner, "downgraded in place")
	require.Equal(t, syscall.Errno(0), setlk(px, 25, flockCall(syscall.F_WRLCK)))
	info = f.inspect("x")
	require.Len(t, info.Leases, 1)
	assert.Equal(t, lockengine.Owner{UID: 1000, GID: 100, PID: 25, Via: lockengine.ViaFlock}, info.Leases[0].Owner, "taken anew")
	fl.Release(ctx)
	px.Release(ctx)
	assert.False(t, f.held("x"))
}

// Reads through a descriptor return the record of the lease it holds
// through lock calls, and nothing while it holds none.
func TestReadThroughLockCalls(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	defer h.Release(ctx)
	assert.Equal(t, "", readRecord(t, h))

	require.Equal(t, syscall.Errno(0), setlk(h, 31, flockCall(syscall.F_WRLCK)))
	l := h.slot.Lease()
	require.NotNil(t, l)
	rec := readRecord(t, h)
	assert.Equal(t, string(Record("x", lockengine.Exclusive, l.Token(), l.Owner(), l.Granted())), rec)
	first, rest, _ := strings.Cut(rec, "\n")
	assert.Equal(t, strconv.FormatUint(l.Token(), 10), first)
	assert.Contains(t, rest, "name=x mode=exclusive token="+first+" uid=1000 gid=100 pid=31 ")

	// After a downgrade the record shows the shared lease.
	require.Equal(t, syscall.Errno(0), setlk(h, 31, flockCall(syscall.F_RDLCK)))
	assert.Contains(t, readRecord(t, h), "mode=shared token="+first+" ")

	require.Equal(t, syscall.Errno(0), setlk(h, 31, flockCall(syscall.F_UNLCK)))
	assert.Equal(t, "", readRecord(t, h), "nothing after LOCK_UN")

	// A POSIX lock taken through the descriptor is what it reads.
	require.Equal(t, syscall.Errno(0), setlk(h, 32, posixCall(3, syscall.F_WRLCK)))
	assert.Nil(t, h.slot.Lease())
	pl := h.lease()
	require.NotNil(t, pl)
	assert.Contains(t, readRecord(t, h), "mode=exclusive token="+strconv.FormatUint(pl.Token(), 10)+" uid=1000 gid=100 pid=32 ")
	// Another descriptor reads nothing: it holds nothing.
	other := f.openEmpty(t, "x", policy{}, syscall.O_RDONLY)
	assert.Equal(t, "", readRecord(t, other))
	other.Release(ctx)

	// Loss of the lease shows as EIO through the descriptor.
	f.b.lose("x")
	require.Eventually(t, func() bool { return pl.Err() != nil }, deadline, time.Millisecond)
	_, errno := h.Read(ctx, make([]byte, 64), 0)
	assert.Equal(t, syscall.EIO, errno)
	assert.Equal(t, syscall.EIO, h.Fsync(ctx, 0))
	// A later call takes the name again.
	require.Equal(t, syscall.Errno(0), setlkw(h, 32, posixCall(3, syscall.F_WRLCK)))
	assert.Equal(t, syscall.Errno(0), h.Fsync(ctx, 0))
	assert.NotEqual(t, "", readRecord(t, h))
}

// An owner's POSIX lock that was unlocked leaves an empty entry in the
// table. It must not shadow the lock a descriptor's open took: a POSIX
// call through that descriptor acts on the descriptor's lock, so it does
// not wait for itself, and F_GETLK through it does not report it as a
// conflict.
func TestEmptyPosixEntryDoesNotShadowOpenLock(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	h1 := f.openEmpty(t, "x", policy{kind: waitNone}, syscall.O_RDWR)
	defer h1.Release(ctx)
	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_WRLCK)))
	require.Equal(t, syscall.Errno(0), setlk(h1, 100, posixCall(1, syscall.F_UNLCK)))
	assert.False(t, f.held("x"))

	// The same process opens M/x for writing: the open takes the lock.
	h2 := f.open(t, "x", policy{}, syscall.O_WRONLY)
	defer h2.Release(ctx)
	lease := h2.lease()

	assert.Equal(t, fuse.FileLock{Typ: syscall.F_UNLCK}, getlk(t, h2, 1, syscall.F_WRLCK), "its own open's lock")
	assert.Equal(t, syscall.Errno(0), setlk(h2, 100, posixCall(1, syscall.F_WRLCK)), "F_SETLK through the holding descriptor")
	assert.Equal(t, syscall.Errno(0), setlkw(h2, 100, posixCall(1, syscall.F_WRLCK)), "F_SETLKW through the holding descriptor")
	assert.Same(t, lease, h2.slot.Lease())
	assert.Equal(t, 0, f.waiters("x"))
	require.Equal(t, syscall.Errno(0), setlk(h2, 100, posixCall(1, syscall.F_UNLCK)))
	assert.False(t, f.held("x"), "F_UNLCK through the descriptor releases its lock")
}
