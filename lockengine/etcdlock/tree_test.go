package etcdlock_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// Lock directories of the etcd backend: the keys, and what the
// transactions see that the dir backend cannot (requests of other
// daemons, whether they hold or wait). The Tree contract itself is
// checked by the conformance suite.

// keysUnder lists the keys under prefix+rel.
func keysUnder(t *testing.T, prefix, rel string) []string {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+rel, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), prefix))
	}
	return keys
}

// The encoding of names in keys has no '/', keeps names without '%' and
// '/' as they are, and tells apart names that differ.
func TestNameEncoding(t *testing.T) {
	for name, want := range map[string]string{
		"deploy":      "deploy",
		"team/deploy": "team%2Fdeploy",
		"a%2Fb":       "a%252Fb",
		"%":           "%25",
		"a/b/c%d":     "a%2Fb%2Fc%25d",
		"%dirs":       "%25dirs",
	} {
		assert.Equal(t, want, etcdlock.EncodeName(name), "%q", name)
		assert.Equal(t, name, etcdlock.DecodeName(want), "%q", want)
	}
}

// The keys: top-level names as before, nested names under their encoded
// path, directories under P/%dirs/ with a readable, versioned value.
func TestTreeKeys(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	b := bs[0]
	ctx := ctxT(t)
	require.NoError(t, b.Mkdir(ctx, "team", lockengine.DirAttr{UID: 1000, GID: 2000, Mode: 0o2775}))
	require.NoError(t, b.Mkdir(ctx, "team/a%b", lockengine.DirAttr{UID: 1, GID: 2, Mode: 0o1700}))
	resp, err := admin.Get(ctx, prefix+"%dirs/team")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Regexp(t, `^lockfs-dir1 uid=1000 gid=2000 mode=2775 mtime=\d+$`, string(resp.Kvs[0].Value))
	assert.Zero(t, resp.Kvs[0].Lease, "directories belong to no session")
	assert.Equal(t, []string{"%dirs/team", "%dirs/team%2Fa%25b"}, keysUnder(t, prefix, "%dirs/"))

	top, err := b.TryLock(ctx, "deploy", ex, nil)
	require.NoError(t, err)
	nested, err := b.TryLock(ctx, "team/a%b/deploy", ex, nil)
	require.NoError(t, err)
	assert.Len(t, keysUnder(t, prefix, "deploy/q/w/"), 1, "a top-level name keeps its keys")
	assert.Len(t, keysUnder(t, prefix, "team%2Fa%25b%2Fdeploy/q/w/"), 1)
	require.NoError(t, top.Unlock())
	require.NoError(t, nested.Unlock())

	// A corrupt or unknown record is an error, not a directory without
	// attributes.
	_, err = admin.Put(ctx, prefix+"%dirs/team", "lockfs-dir9 whatever")
	require.NoError(t, err)
	_, err = b.StatDir(ctx, "team")
	require.Error(t, err)
	require.NotErrorIs(t, err, lockengine.ErrNoDir)
}

// A request of another daemon, held or only waiting (here: a key of a
// session etcd knows, put by hand), keeps its directory and its path, and
// a generation key left behind does not.
func TestTreeSeesRequestsOfOtherDaemons(t *testing.T) {
	prefix, bs := backends(t, 1, etcdlock.Options{})
	b := bs[0]
	ctx := ctxT(t)
	require.NoError(t, b.Mkdir(ctx, "d", lockengine.DirAttr{Mode: 0o755}))
	lease, err := admin.Grant(ctx, 60)
	require.NoError(t, err)
	defer func() { _, _ = admin.Revoke(context.Background(), lease.ID) }()
	for _, key := range []string{"d%2Fx/q/r/1-0", "y/q/w/1-0"} {
		_, err = admin.Put(ctx, prefix+key, "someone", clientv3.WithLease(lease.ID))
		require.NoError(t, err)
	}
	require.ErrorIs(t, b.Rmdir(ctx, "d"), lockengine.ErrNotEmpty)
	require.ErrorIs(t, b.Mkdir(ctx, "d/x", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
	require.ErrorIs(t, b.Mkdir(ctx, "y", lockengine.DirAttr{Mode: 0o755}), lockengine.ErrExist)
	_, err = admin.Revoke(ctx, lease.ID)
	require.NoError(t, err)

	// Generation keys left by holders that died after a bump.
	for _, key := range []string{"d%2Fx/gen", "y/gen"} {
		_, err = admin.Put(ctx, prefix+key, "old")
		require.NoError(t, err)
	}
	require.NoError(t, b.Mkdir(ctx, "y", lockengine.DirAttr{Mode: 0o755}))
	require.NoError(t, b.Rmdir(ctx, "d"))
	assert.Empty(t, keysUnder(t, prefix, "d%2F"), "keys left below a removed directory")
	assert.Empty(t, keysUnder(t, prefix, "y/"), "keys left of a name that is now a directory")
	require.NoError(t, b.Rmdir(ctx, "y"))
}
