package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
)

// Lock directories (see the package documentation, Keys): the keys of a
// name use an encoding of its path in which '/' never appears, and each
// lock directory is one key under P/%dirs/, holding its attributes.

var (
	nameEscaper   = strings.NewReplacer("%", "%25", "/", "%2F")
	nameUnescaper = strings.NewReplacer("%25", "%", "%2F", "/")
)

// encodeName returns the encoding of a valid name or directory path used
// in keys: '%' as "%25" and '/' as "%2F". Names without '%' or '/' are
// their own encoding. The encoding has no '/', so P/ENC/ prefixes the
// keys of one name only; it starts with "%2" only where the name starts
// with '%', so it never starts with "%d" and no name's keys are under
// P/%dirs/; and ENC(dir)+"%2F" prefixes exactly the encodings of the names
// and directories below dir.
func encodeName(name string) string {
	if !strings.ContainsAny(name, "%/") {
		return name
	}
	return nameEscaper.Replace(name)
}

// decodeName undoes encodeName.
func decodeName(enc string) string {
	if !strings.Contains(enc, "%") {
		return enc
	}
	return nameUnescaper.Replace(enc)
}

// dirsKey is the infix of the directory keys, P/%dirs/.
const dirsKey = "%dirs/"

// sep is the encoding of '/'.
const sep = "%2F"

// dirKey returns the key of lock directory path (not the root).
func (b *Backend) dirKey(path string) string {
	return b.opts.Prefix + dirsKey + encodeName(path)
}

// childrenPrefix returns the prefix of the keys of the directories below
// path ("" is the root: every directory).
func (b *Backend) childrenPrefix(path string) string {
	if path == "" {
		return b.opts.Prefix + dirsKey
	}
	return b.dirKey(path) + sep
}

// namesBelow returns the prefix of the keys of every name below directory
// path.
func (b *Backend) namesBelow(path string) string {
	return b.opts.Prefix + encodeName(path) + sep
}

// nameKeys returns the prefix of the keys of name, P/ENC/.
func (b *Backend) nameKeys(name string) string {
	return b.opts.Prefix + encodeName(name) + "/"
}

// noRequests compares true while no key with a lease exists under prefix:
// every request key has its session's lease, while generation keys and
// directory keys have none. So a generation key left behind (see Tokens)
// is not a name in use.
func noRequests(prefix string) clientv3.Cmp {
	return clientv3.Compare(clientv3.LeaseValue(prefix), "=", clientv3.NoLease).WithPrefix()
}

// exists and absent compare true while key exists, does not exist.
func exists(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), ">", 0) }
func absent(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), "=", 0) }

// treeCmps compares true while name can be locked: its parent directory
// exists (unless it is top level) and it is not a directory itself. A
// request's key is put only in a transaction guarded by them (attempt),
// and Mkdir and Rmdir are guarded by the converse, so a lock and a
// directory change of one path are never both applied.
func (k keys) treeCmps() []clientv3.Cmp {
	cmps := []clientv3.Cmp{absent(k.dir)}
	if k.parent != "" {
		cmps = append(cmps, exists(k.parent))
	}
	return cmps
}

// treeGets are the reads of a failed treeCmps transaction, for treeErr.
func (k keys) treeGets() []clientv3.Op {
	if k.parent == "" {
		return nil
	}
	return []clientv3.Op{clientv3.OpGet(k.parent, clientv3.WithCountOnly())}
}

// treeErr tells why treeCmps failed, from the responses of treeGets.
func (k keys) treeErr(resp *clientv3.TxnResponse) error {
	if k.parent != "" && resp.Responses[0].GetResponseRange().Count == 0 {
		dir, _ := lockengine.SplitName(k.name)
		return fmt.Errorf("etcdlock: %q: %w: %q does not exist", k.name, lockengine.ErrNoDir, dir)
	}
	return fmt.Errorf("etcdlock: %q: %w", k.name, lockengine.ErrIsDir)
}

// dirRecordVersion starts the value of a directory key.
const dirRecordVersion = "lockfs-dir1"

// encodeDirAttr returns the value of a directory key: a version, then
// uid, gid, mode (octal) and mtime (Unix nanoseconds), readable with
// etcdctl.
func encodeDirAttr(a lockengine.DirAttr) string {
	return fmt.Sprintf("%s uid=%d gid=%d mode=%04o mtime=%d", dirRecordVersion, a.UID, a.GID, a.Mode&0o7777, a.Mtime.UnixNano())
}

// errCorruptDir: a directory key holds a value decodeDirAttr cannot read
// (another version, or written by hand).
var errCorruptDir = errors.New("unreadable directory record")

// decodeDirAttr reads the value of a directory key.
func decodeDirAttr(v []byte) (lockengine.DirAttr, error) {
	f := strings.Fields(string(v))
	if len(f) != 5 || f[0] != dirRecordVersion {
		return lockengine.DirAttr{}, fmt.Errorf("%w %q", errCorruptDir, v)
	}
	var n [4]uint64
	for i, p := range []struct {
		key  string
		base int
		bits int
	}{{"uid=", 10, 32}, {"gid=", 10, 32}, {"mode=", 8, 12}, {"mtime=", 10, 63}} {
		s, ok := strings.CutPrefix(f[i+1], p.key)
		var err error
		if ok {
			n[i], err = strconv.ParseUint(s, p.base, p.bits)
		}
		if !ok || err != nil {
			return lockengine.DirAttr{}, fmt.Errorf("%w %q", errCorruptDir, v)
		}
	}
	return lockengine.DirAttr{UID: uint32(n[0]), GID: uint32(n[1]), Mode: uint32(n[2]),
		Mtime: time.Unix(0, int64(n[3]))}, nil
}

// treeOp runs one transaction of a Tree call, bounded by ctx and
// OpTimeout, and classifies its failure like requestErr.
func (b *Backend) treeOp(ctx context.Context, op, path string, txn func(ctx context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	if !b.track() {
		return nil, fmt.Errorf("etcdlock: %s %q: %w", op, path, lockengine.ErrClosed)
	}
	defer b.wg.Done()
	rctx, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := txn(rctx)
	if err != nil {
		return nil, b.requestErr(ctx, nil, path, op, err)
	}
	return resp, nil
}

// StatDir implements lockengine.Tree: one read of the directory's key.
func (b *Backend) StatDir(ctx context.Context, path string) (lockengine.DirAttr, error) {
	if path == "" {
		return lockengine.DirAttr{}, nil
	}
	if err := lockengine.ValidateName(path); err != nil {
		return lockengine.DirAttr{}, err
	}
	key := b.dirKey(path)
	resp, err := b.treeOp(ctx, "stat", path, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.client.Txn(ctx).Then(clientv3.OpGet(key)).Commit()
	})
	if err != nil {
		return lockengine.DirAttr{}, err
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return lockengine.DirAttr{}, fmt.Errorf("etcdlock: stat %q: %w", path, lockengine.ErrNoDir)
	}
	a, err := decodeDirAttr(kvs[0].Value)
	if err != nil {
		return lockengine.DirAttr{}, fmt.Errorf("etcdlock: stat %q: key %s: %w", path, key, err)
	}
	return a, nil
}

// Mkdir implements lockengine.Tree: one transaction puts the directory's
// key if its parent's key exists, its own does not, and no request (a
// key with a lease) exists for a name at path; a generation key left by
// an earlier use of the name is deleted with it.
func (b *Backend) Mkdir(ctx context.Context, path string, attr lockengine.DirAttr) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	dir, _ := lockengine.SplitName(path)
	key := b.dirKey(path)
	attr.Mtime = time.Now()
	cmps := []clientv3.Cmp{absent(key), noRequests(b.nameKeys(path))}
	elseOps := []clientv3.Op{clientv3.OpGet(key, clientv3.WithCountOnly())}
	if dir != "" {
		cmps = append(cmps, exists(b.dirKey(dir)))
		elseOps = append(elseOps, clientv3.OpGet(b.dirKey(dir), clientv3.WithCountOnly()))
	}
	resp, err := b.treeOp(ctx, "mkdir", path, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.client.Txn(ctx).If(cmps...).Then(
			clientv3.OpPut(key, encodeDirAttr(attr)),
			clientv3.OpDelete(b.nameKeys(path), clientv3.WithPrefix()),
		).Else(elseOps...).Commit()
	})
	switch {
	case err != nil:
		return err
	case resp.Succeeded:
		return nil
	case dir != "" && resp.Responses[1].GetResponseRange().Count == 0:
		return fmt.Errorf("etcdlock: mkdir %q: %w: %q does not exist", path, lockengine.ErrNoDir, dir)
	case resp.Responses[0].GetResponseRange().Count > 0:
		return fmt.Errorf("etcdlock: mkdir %q: %w: the directory exists", path, lockengine.ErrExist)
	}
	return fmt.Errorf("etcdlock: mkdir %q: %w: a lock of that name is held or waited for", path, lockengine.ErrExist)
}

// Rmdir implements lockengine.Tree: one transaction deletes the
// directory's key if it exists, no directory key exists below it, and no
// request (held or waiting, of any daemon) exists for a name below it;
// generation keys left below are deleted with it.
func (b *Backend) Rmdir(ctx context.Context, path string) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	key := b.dirKey(path)
	sub := clientv3.Compare(clientv3.CreateRevision(b.childrenPrefix(path)), "=", 0).WithPrefix()
	resp, err := b.treeOp(ctx, "rmdir", path, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.client.Txn(ctx).If(exists(key), sub, noRequests(b.namesBelow(path))).Then(
			clientv3.OpDelete(key),
			clientv3.OpDelete(b.namesBelow(path), clientv3.WithPrefix()),
		).Else(
			clientv3.OpGet(key, clientv3.WithCountOnly()),
			clientv3.OpGet(b.childrenPrefix(path), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).Commit()
	})
	switch {
	case err != nil:
		return err
	case resp.Succeeded:
		return nil
	case resp.Responses[0].GetResponseRange().Count == 0:
		return fmt.Errorf("etcdlock: rmdir %q: %w", path, lockengine.ErrNoDir)
	case resp.Responses[1].GetResponseRange().Count > 0:
		return fmt.Errorf("etcdlock: rmdir %q: %w: it has subdirectories", path, lockengine.ErrNotEmpty)
	}
	return fmt.Errorf("etcdlock: rmdir %q: %w: locks below it are held or waited for", path, lockengine.ErrNotEmpty)
}

// SetDirAttr implements lockengine.Tree: one transaction rewrites the
// directory's key if it exists.
func (b *Backend) SetDirAttr(ctx context.Context, path string, attr lockengine.DirAttr) error {
	if err := lockengine.ValidateName(path); err != nil {
		return err
	}
	key := b.dirKey(path)
	attr.Mtime = time.Now()
	resp, err := b.treeOp(ctx, "setattr", path, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.client.Txn(ctx).If(exists(key)).Then(clientv3.OpPut(key, encodeDirAttr(attr))).Commit()
	})
	switch {
	case err != nil:
		return err
	case !resp.Succeeded:
		return fmt.Errorf("etcdlock: setattr %q: %w", path, lockengine.ErrNoDir)
	}
	return nil
}

// ReadDir implements lockengine.Tree: one keys-only read of the
// directories below path (in the same transaction as the check that path
// exists), of which the immediate children are returned.
func (b *Backend) ReadDir(ctx context.Context, path string) ([]string, error) {
	var cmps []clientv3.Cmp
	if path != "" {
		if err := lockengine.ValidateName(path); err != nil {
			return nil, err
		}
		cmps = append(cmps, exists(b.dirKey(path)))
	}
	prefix := b.childrenPrefix(path)
	resp, err := b.treeOp(ctx, "readdir", path, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return b.client.Txn(ctx).If(cmps...).Then(clientv3.OpGet(prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	})
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("etcdlock: readdir %q: %w", path, lockengine.ErrNoDir)
	}
	var names []string
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		rest := string(kv.Key[len(prefix):])
		if rest == "" || strings.Contains(rest, sep) {
			continue // a deeper directory
		}
		names = append(names, decodeName(rest))
	}
	slices.Sort(names)
	return names, nil
}
