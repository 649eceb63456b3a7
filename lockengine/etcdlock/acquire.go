package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
)

// keys are the etcd keys of one lock name (see the package documentation).
type keys struct {
	name string
	q    string // P/NAME/q/: every request
	w    string // P/NAME/q/w/: exclusive requests
	r    string // P/NAME/q/r/: shared requests
	gen  string // P/NAME/gen: the generation key
}

func (b *Backend) keys(name string) keys {
	base := b.opts.Prefix + name + "/"
	return keys{name: name, q: base + "q/", w: base + "q/w/", r: base + "q/r/", gen: base + "gen"}
}

// TryLock implements lockengine.Backend. It makes one transaction: the
// name is granted if no request for it is queued (exclusive) or no
// exclusive request is queued (shared), by any backend; otherwise it
// returns an error wrapping lockengine.ErrWouldBlock and leaves nothing
// behind.
func (b *Backend) TryLock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	return b.acquire(ctx, name, mode, lost, false)
}

// Lock implements lockengine.Backend. It queues a request for name and
// waits until it is granted in FIFO order (see the package documentation)
// or ctx ends. When ctx ends, the request's key is deleted before Lock
// returns an error wrapping ctx.Err(). It fails with an error wrapping
// ErrSessionExpired if the session ends while waiting, ErrUnavailable if a
// request to etcd times out, and lockengine.ErrClosed if the backend is
// closed.
func (b *Backend) Lock(ctx context.Context, name string, mode lockengine.Mode, lost func(error)) (lockengine.Hold, error) {
	return b.acquire(ctx, name, mode, lost, true)
}

func (b *Backend) acquire(ctx context.Context, name string, mode lockengine.Mode, lost func(error), wait bool) (lockengine.Hold, error) {
	if err := lockengine.ValidateName(name); err != nil {
		return nil, err
	}
	if !mode.Valid() {
		return nil, fmt.Errorf("etcdlock: %q: %w: %d", name, lockengine.ErrInvalidMode, mode)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcdlock: %q: %w", name, err)
	}
	if lost == nil {
		lost = func(error) {}
	}
	if !b.track() {
		return nil, fmt.Errorf("etcdlock: %q: %w", name, lockengine.ErrClosed)
	}
	defer b.wg.Done()
	for attempt := 0; ; attempt++ {
		s, err := b.session(ctx)
		if err != nil {
			return nil, fmt.Errorf("etcdlock: lock %q: %w", name, err)
		}
		h, err := b.attempt(ctx, s, b.keys(name), mode, lost, wait)
		if err != nil && attempt == 0 && errors.Is(err, errLeaseGone) {
			// The lease died before the keepalive loop noticed: end the
			// session (its holds are lost anyway) and retry once with a
			// new one.
			s.end(fmt.Errorf("%w: lease %s not found", ErrSessionExpired, leaseHex(s.id)))
			continue
		}
		if errors.Is(err, errLeaseGone) {
			return nil, fmt.Errorf("etcdlock: %q: %w: lease %s not found", name, ErrSessionExpired, leaseHex(s.id))
		}
		return h, err
	}
}

// errLeaseGone: the request failed because the session lease does not
// exist any more (and nothing was queued).
var errLeaseGone = errors.New("lease not found")

// request is one request of a session for a name: its key, named after a
// slot of the session, and once created the key's create revision.
type request struct {
	s    *session
	k    keys
	mode lockengine.Mode
	slot uint32
	key  string
	rev  int64 // create revision of key; 0 until known
}

func (b *Backend) newRequest(s *session, k keys, mode lockengine.Mode) *request {
	r := &request{s: s, k: k, mode: mode, slot: s.slots.get(k.name)}
	r.key = k.r
	if mode == lockengine.Exclusive {
		r.key = k.w
	}
	r.key += leaseHex(s.id) + "-" + strconv.FormatUint(uint64(r.slot), 10)
	return r
}

// release gives the request's slot back; see slots for when that is safe.
func (r *request) release() { r.s.slots.put(r.k.name, r.slot) }

// mine compares true while the request's key exists.
func (r *request) mine() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(r.key), "=", r.rev)
}

// attempt queues (or, with !wait, tries) one request on session s.
func (b *Backend) attempt(ctx context.Context, s *session, k keys, mode lockengine.Mode, lost func(error), wait bool) (*hold, error) {
	r := b.newRequest(s, k, mode)
	owner := b.opts.Owner
	lease := clientv3.WithLease(s.id)

	// Grantable at once: the queue is empty (writer) or holds no writer
	// (reader). All keys that exist now are older than the one we put.
	var cond clientv3.Cmp
	var genOps []clientv3.Op
	var pred clientv3.Op
	if mode == lockengine.Exclusive {
		cond = clientv3.Compare(clientv3.CreateRevision(k.q), "=", 0).WithPrefix()
		genOps = []clientv3.Op{clientv3.OpPut(k.gen, owner, lease)}
		pred = clientv3.OpGet(k.q, append(clientv3.WithLastCreate(), clientv3.WithKeysOnly())...)
	} else {
		cond = clientv3.Compare(clientv3.CreateRevision(k.w), "=", 0).WithPrefix()
		genOps = []clientv3.Op{b.readGen(k, owner, lease)}
		pred = clientv3.OpGet(k.w, append(clientv3.WithLastCreate(), clientv3.WithKeysOnly())...)
	}
	put := clientv3.OpPut(r.key, owner, lease)
	self := clientv3.OpGet(r.key, clientv3.WithKeysOnly())
	thenOps := append([]clientv3.Op{put, self}, genOps...)
	var elseOps []clientv3.Op
	if wait {
		elseOps = []clientv3.Op{pred, put, self}
	}

	// The transaction that creates the key is not cancelled with ctx: its
	// outcome must be known, or the key could appear after we gave up
	// (an abandoned request can still be applied) and block the name.
	rctx, cancel := b.opCtx(context.WithoutCancel(ctx))
	resp, err := b.client.Txn(rctx).If(cond).Then(thenOps...).Else(elseOps...).Commit()
	cancel()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			r.release() // the put failed: nothing to clean up
			return nil, errLeaseGone
		}
		// Timed out: the transaction may still be applied, later.
		b.reap(r)
		return nil, b.requestErr(ctx, s, k.name, "lock", err)
	}
	if !resp.Succeeded && !wait {
		r.release()
		return nil, fmt.Errorf("etcdlock: %q %v: %w", k.name, mode, lockengine.ErrWouldBlock)
	}
	if resp.Succeeded {
		r.rev = resp.Responses[1].GetResponseRange().Kvs[0].CreateRevision
	} else {
		r.rev = resp.Responses[2].GetResponseRange().Kvs[0].CreateRevision
	}
	if err := ctx.Err(); err != nil {
		b.removeKey(ctx, r)
		return nil, fmt.Errorf("etcdlock: lock %q: %w", k.name, err)
	}
	if resp.Succeeded {
		token := uint64(resp.Header.Revision) // the generation key was put here
		if mode == lockengine.Shared {
			token = genToken(resp.Responses[2].GetResponseTxn(), resp.Header.Revision)
		}
		return b.grant(ctx, r, token, resp.Header.Revision, lost)
	}
	var predKey []byte
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		predKey = kvs[0].Key
	}
	h, err := b.waitTurn(ctx, r, predKey, resp.Header.Revision, lost)
	if err != nil {
		b.removeKey(ctx, r)
		return nil, err
	}
	return h, nil
}

// readGen returns the operation that reads the generation key, creating it
// (attached to lease) if it does not exist.
func (b *Backend) readGen(k keys, owner string, lease clientv3.OpOption) clientv3.Op {
	return clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k.gen), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(k.gen, owner, lease)},
		[]clientv3.Op{clientv3.OpGet(k.gen, clientv3.WithKeysOnly())},
	)
}

// genToken extracts a shared grant's token from the response of readGen
// within a transaction applied at revision rev: rev if readGen created the
// generation key, else the key's mod revision.
func genToken(r *pb.TxnResponse, rev int64) uint64 {
	if r.Succeeded {
		return uint64(rev)
	}
	return uint64(r.Responses[0].GetResponseRange().Kvs[0].ModRevision)
}

// waitTurn waits until request r is granted. pred is the newest key it
// waits for as of revision at, nil if none.
func (b *Backend) waitTurn(ctx context.Context, r *request, pred []byte, at int64, lost func(error)) (*hold, error) {
	s, k := r.s, r.k
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	owner := b.opts.Owner
	lease := clientv3.WithLease(s.id)
	older := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(r.rev-1), clientv3.WithKeysOnly())
	for {
		if pred != nil {
			b.log.Debug("waiting", "lock", k.name, "mode", r.mode, "for", string(pred))
			if err := b.waitDelete(wctx, string(pred), at+1); err != nil {
				return nil, b.requestErr(ctx, s, k.name, "wait", err)
			}
		}
		// Decide again on one snapshot: is our key still there, and is
		// any key we must wait for older than it?
		var txn clientv3.Txn
		rctx, rcancel := b.opCtx(wctx)
		if r.mode == lockengine.Exclusive {
			// Our own key is in the range, so it is never empty (an
			// empty range would compare as create revision 0).
			txn = b.client.Txn(rctx).
				If(r.mine(), clientv3.Compare(clientv3.CreateRevision(k.q), ">", r.rev-1).WithPrefix()).
				Then(clientv3.OpPut(k.gen, owner, lease)).
				Else(clientv3.OpGet(r.key, clientv3.WithKeysOnly()), clientv3.OpGet(k.q, older...))
		} else {
			// Creating a missing generation key before the grant is
			// harmless: tokens only depend on what the grant reads.
			txn = b.client.Txn(rctx).
				If(r.mine()).
				Then(clientv3.OpGet(k.w, older...), b.readGen(k, owner, lease))
		}
		resp, err := txn.Commit()
		rcancel()
		if err != nil {
			return nil, b.requestErr(ctx, s, k.name, "lock", err)
		}
		at = resp.Header.Revision
		switch {
		case r.mode == lockengine.Exclusive && resp.Succeeded:
			return b.grant(ctx, r, uint64(at), at, lost)
		case r.mode == lockengine.Exclusive:
			if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
				return nil, b.keyGone(ctx, r)
			}
			pred = nil
			if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
				pred = kvs[0].Key
			}
		case !resp.Succeeded:
			return nil, b.keyGone(ctx, r)
		default:
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 {
				return b.grant(ctx, r, genToken(resp.Responses[1].GetResponseTxn(), at), at, lost)
			}
			pred = kvs[0].Key
		}
	}
}

// keyGone is the error when a waiting request's key vanished: the lease
// expired, or someone deleted the key.
func (b *Backend) keyGone(ctx context.Context, r *request) error {
	r.s.check()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcdlock: lock %q: %w", r.k.name, err)
	}
	return fmt.Errorf("etcdlock: lock %q: %w: waiting key %s vanished", r.k.name, ErrSessionExpired, r.key)
}

// waitDelete waits for a DELETE event of key at revision from or later.
// It returns nil after the event, or when the watch ends for another
// reason (the caller decides again), and ctx's error when ctx ends.
func (b *Backend) waitDelete(ctx context.Context, key string, from int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range b.client.Watch(wctx, key, clientv3.WithRev(from), clientv3.WithFilterPut()) {
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
		if wr.Err() != nil {
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Do not spin if watches keep failing.
	if !sleepCtx(ctx, 100*time.Millisecond) {
		return ctx.Err()
	}
	return nil
}

// grant turns granted request r into a Hold watched for deletion. at is a
// revision at which the key exists.
func (b *Backend) grant(ctx context.Context, r *request, token uint64, at int64, lost func(error)) (*hold, error) {
	s := r.s
	h := &hold{r: r, lost: lost}
	h.token.Store(token)
	wctx, cancel := context.WithCancel(s.ctx)
	h.stopWatch = cancel
	if !s.add(h) {
		cancel()
		b.removeKey(ctx, r)
		return nil, b.requestErr(ctx, s, r.k.name, "lock",
			fmt.Errorf("%w: lease %s not proven alive at grant", ErrSessionExpired, leaseHex(s.id)))
	}
	b.wg.Add(1) // inside a counted call
	go h.watchLoop(wctx, at+1)
	b.log.Debug("lock granted", "lock", r.k.name, "mode", r.mode, "token", token)
	return h, nil
}

// removeKey deletes the key of a request that will not be granted (or was
// granted to a caller that gave up), at once, even if ctx has ended. If
// etcd cannot be reached it keeps trying in the background until the
// session ends, so that a key of a live lease never blocks the name.
func (b *Backend) removeKey(ctx context.Context, r *request) {
	if r.s.ended() {
		r.release() // the key goes with the lease
		return
	}
	dctx, cancel := b.opCtx(context.WithoutCancel(ctx))
	_, err := b.client.Txn(dctx).If(r.mine()).Then(clientv3.OpDelete(r.key)).Commit()
	cancel()
	if err != nil {
		b.removeLater(r)
		return
	}
	r.release()
}

// removeLater deletes r's key in the background, retrying until it
// succeeds, the session ends or the backend closes (Close revokes the
// lease), then gives the slot back.
func (b *Backend) removeLater(r *request) {
	b.log.Warn("cannot delete lock key; retrying in the background", "lock", r.k.name, "key", r.key)
	if !b.track() {
		r.release()
		return
	}
	go func() {
		defer b.wg.Done()
		defer r.release()
		delay := 100 * time.Millisecond
		for {
			if !sleepCtx(r.s.ctx, delay) {
				return
			}
			ctx, cancel := b.opCtx(r.s.ctx)
			_, err := b.client.Txn(ctx).If(r.mine()).Then(clientv3.OpDelete(r.key)).Commit()
			cancel()
			if err == nil {
				return
			}
			delay = min(2*delay, 2*time.Second)
		}
	}()
}

// reapFor bounds how long reap watches for a late key. A request that
// timed out is applied late, if at all, within a few election timeouts;
// this is far more.
const reapFor = 5 * time.Minute

// reap deletes the key of r, whose creation timed out and may still be
// applied, in the background: now, and again whenever it appears, until
// the session ends (then the lease takes the key with it) or reapFor
// passes. The create revision is unknown, so the deletes are not
// conditional: r keeps its slot until reap ends, so no later request of
// the session uses the key meanwhile.
func (b *Backend) reap(r *request) {
	b.log.Warn("lock request timed out; reaping its key in the background", "lock", r.k.name, "key", r.key)
	if !b.track() {
		r.release()
		return
	}
	go func() {
		defer b.wg.Done()
		defer r.release()
		rctx, stop := context.WithTimeout(r.s.ctx, reapFor)
		defer stop()
		for rctx.Err() == nil {
			ctx, cancel := b.opCtx(rctx)
			resp, err := b.client.Delete(ctx, r.key)
			cancel()
			if err != nil {
				sleepCtx(rctx, 500*time.Millisecond)
				continue
			}
			wctx, wcancel := context.WithCancel(rctx)
			for wr := range b.client.Watch(wctx, r.key, clientv3.WithRev(resp.Header.Revision+1), clientv3.WithFilterDelete()) {
				if len(wr.Events) > 0 || wr.Err() != nil {
					break // put after all (or the watch failed): delete again
				}
			}
			wcancel()
			sleepCtx(rctx, 100*time.Millisecond)
		}
	}()
}
