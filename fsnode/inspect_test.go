package fsnode

import (
	"context"
	"fmt"
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

func callerCtx(uid, gid, pid uint32) *fuse.Context {
	return &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}, Pid: pid}, Cancel: make(chan struct{})}
}

func getxattr(t *testing.T, n *lockNode, attr string) (string, syscall.Errno) {
	t.Helper()
	sz, errno := n.Getxattr(context.Background(), attr, nil)
	if errno != 0 {
		return "", errno
	}
	buf := make([]byte, sz)
	got, errno := n.Getxattr(context.Background(), attr, buf)
	return string(buf[:got]), errno
}

func TestInspectAttributes(t *testing.T) {
	f := newFixture(t)
	f.fsys.rootAttr = lockengine.DirAttr{UID: 7, GID: 8, Mode: 0o2755}
	n := f.node("x", policy{})

	var out fuse.AttrOut
	require.Equal(t, syscall.Errno(0), n.Getattr(context.Background(), nil, &out))
	assert.Equal(t, uint32(7), out.Uid, "the directory's owner")
	assert.Equal(t, uint32(8), out.Gid, "the directory's group")
	assert.Equal(t, uint32(syscall.S_IFREG|0o644), out.Mode, "the directory's read and write bits")
	v, errno := getxattr(t, n, XattrState)
	require.Equal(t, syscall.Errno(0), errno)
	assert.Equal(t, "free", v)

	fh, _, errno := n.Open(callerCtx(1000, 100, 4242), syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	h := fh.(*handle)
	require.Equal(t, syscall.Errno(0), n.Getattr(context.Background(), nil, &out))
	assert.Equal(t, uint32(7), out.Uid, "the directory's owner, not the holder's")
	assert.Equal(t, uint32(8), out.Gid)
	assert.Equal(t, uint64(h.lease().Granted().Unix()), out.Mtime)

	tok := strconv.FormatUint(h.lease().Token(), 10)
	for attr, want := range map[string]string{XattrToken: tok, XattrMode: "exclusive", XattrState: "held", XattrWaiters: "0"} {
		v, errno := getxattr(t, n, attr)
		require.Equal(t, syscall.Errno(0), errno, attr)
		assert.Equal(t, want, v, attr)
	}
	v, _ = getxattr(t, n, XattrHolders)
	assert.True(t, strings.HasPrefix(v, "1000 100 4242 exclusive "+tok+" "), v)
	assert.True(t, strings.HasSuffix(v, " open\n"), "the open took it: %q", v)
	assert.Equal(t, 1, strings.Count(v, "\n"), v)
	_, errno = getxattr(t, n, "security.capability")
	assert.Equal(t, syscall.ENODATA, errno)
	_, errno = getxattr(t, n, XattrPrefix+"nope")
	assert.Equal(t, syscall.ENODATA, errno)
	_, errno = n.Getxattr(context.Background(), XattrHolders, make([]byte, 2))
	assert.Equal(t, syscall.ERANGE, errno)

	sz, errno := n.Listxattr(context.Background(), nil)
	require.Equal(t, syscall.Errno(0), errno)
	buf := make([]byte, sz)
	_, errno = n.Listxattr(context.Background(), buf)
	require.Equal(t, syscall.Errno(0), errno)
	assert.Contains(t, string(buf), XattrToken+"\x00")
	assert.NotContains(t, string(buf), XattrCause)
	h.Release(context.Background())
}

func TestUnlinkBreaks(t *testing.T) {
	f := newFixture(t)
	d := &lockDir{dirBase: dirBase{fsys: f.fsys}, root: true}
	n := f.node("x", policy{})
	assert.Equal(t, syscall.ENOENT, d.Unlink(callerCtx(0, 0, 1), "x"), "nothing held")

	fh, _, errno := n.Open(callerCtx(1000, 100, 4242), syscall.O_WRONLY)
	require.Equal(t, syscall.Errno(0), errno)
	h := fh.(*handle)
	assert.Equal(t, syscall.EPERM, d.Unlink(callerCtx(1001, 100, 5), "x"), "not a holder")
	assert.Equal(t, syscall.Errno(0), h.Fsync(context.Background(), 0))
	assert.Equal(t, syscall.Errno(0), d.Unlink(callerCtx(1000, 100, 6), "x"), "the holder's uid")
	assert.Equal(t, syscall.EIO, h.Fsync(context.Background(), 0))
	_, errno = h.Read(context.Background(), make([]byte, 64), 0)
	assert.Equal(t, syscall.EIO, errno)
	assert.Equal(t, syscall.EINVAL, d.Unlink(callerCtx(0, 0, 1), TryDir))
	h.Release(context.Background())
}

func TestRecord(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	got := string(Record("a b", lockengine.Shared, 42, lockengine.Owner{UID: 1, GID: 2, PID: 3}, at))
	assert.Equal(t, "42\nname=\"a b\" mode=shared token=42 uid=1 gid=2 pid=3 acquired=2026-01-02T03:04:05.000000006Z\n", got)
}

func TestHoldersCapped(t *testing.T) {
	granted := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	leases := make([]lockengine.LeaseInfo, 2000)
	for i := range leases {
		leases[i] = lockengine.LeaseInfo{Owner: lockengine.Owner{UID: uint32(100000 + i), GID: 100000, PID: 4000000,
			Via: lockengine.ViaOpen}, Mode: lockengine.Shared, Token: 1 << 40, Granted: granted}
	}
	v := holdersString(leases, MaxHoldersLen)
	require.LessOrEqual(t, len(v), MaxHoldersLen)
	require.Less(t, MaxHoldersLen, 64*1024, "below XATTR_SIZE_MAX")
	lines := strings.Split(strings.TrimSuffix(v, "\n"), "\n")
	var more int
	_, err := fmt.Sscanf(lines[len(lines)-1], HoldersMore, &more)
	require.NoError(t, err, "last line %q", lines[len(lines)-1])
	require.Equal(t, len(leases), len(lines)-1+more, "listed plus omitted is every lease")
	require.True(t, strings.HasPrefix(lines[0], "100000 100000 4000000 shared "), lines[0])

	// Small limits: whatever fits, always with the count.
	one := holdersString(leases[:1], MaxHoldersLen)
	leases = []lockengine.LeaseInfo{leases[0], leases[0], leases[0]}
	for limit := 0; limit <= 3*len(one); limit++ {
		v := holdersString(leases[:3], limit)
		if limit >= 3*len(one) {
			assert.Equal(t, strings.Repeat(one, 3), v)
			continue
		}
		require.True(t, strings.HasSuffix(v, " more\n"), "limit %d: %q", limit, v)
		if limit >= len(one)+len("... 2 more\n") {
			require.True(t, strings.HasPrefix(v, one), "limit %d: %q", limit, v)
		}
	}
	// Exactly fitting needs no "more" line.
	assert.Equal(t, strings.Repeat(one, 2), holdersString(leases[:2], 2*len(one)))
}

func TestUnlinkErrnos(t *testing.T) {
	assert.Equal(t, syscall.EBUSY, Errno(fmt.Errorf("x: %w", lockengine.ErrLockDelay)))
	assert.Equal(t, syscall.EPERM, Errno(fmt.Errorf("x: %w", lockengine.ErrPermission)))
	assert.Equal(t, uint32(0o777), uint32(DefaultRootMode), "no sticky bit: the daemon decides every unlink")
}
