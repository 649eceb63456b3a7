package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
)

// keys are the etcd keys of one lock name (see the package documentation).
type keys struct {
	name string
	base string // P/NAME/: everything of the name
	q    string // P/NAME/q/: every request
	w    string // P/NAME/q/w/: exclusive requests
	r    string // P/NAME/q/r/: shared requests
	gen  string // P/NAME/gen: the generation key
	// The tree: the directory keys of the name itself and of its
	// parent ("" for a top-level name). See tree.go.
	dir, parent string
}

func (b *Backend) keys(name string) keys {
	base := b.nameKeys(name)
	k := keys{name: name, base: base, q: base + "q/", w: base + "q/w/", r: base + "q/r/", gen: base + "gen", dir: b.dirKey(name)}
	if parent, _ := lockengine.SplitName(name); parent != "" {
		k.parent = b.dirKey(parent)
	}
	return k
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
		if errors.Is(err, errRequeue) && ctx.Err() == nil {
			// Someone deleted the waiting request's key (etcdctl del
			// on the name): it lost its place, not the wait. Queue a
			// new request at the back; a dead lease found by its put
			// gets the retry below again.
			b.log.Info("waiting request's key deleted; queueing again", "lock", name, "mode", mode)
			attempt = -1
			continue
		}
		if err != nil && attempt == 0 && errors.Is(err, errLeaseGone) {
			// The session lease died before the keepalive loop noticed: end the
			// session (its holds are lost anyway) and retry once with a
			// new one.
			s.endLeaseGone()
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
	put := clientv3.OpPut(r.key, b.opts.Owner, clientv3.WithLease(s.id))

	// Grantable at once: the queue is empty (writer) or holds no writer
	// (reader). All keys that exist now are older than the one we put.
	// Otherwise the request queues, and the same snapshot says which keys
	// it waits for: every key (writer) or every writer key (reader); ours
	// is put first, so it is in the writer's range too.
	var cond clientv3.Cmp
	thenOps := []clientv3.Op{put}
	var waitFor clientv3.Op
	if mode == lockengine.Exclusive {
		cond = clientv3.Compare(clientv3.CreateRevision(k.q), "=", 0).WithPrefix()
		// The queue is empty: every later token is a later revision, so
		// a generation key left by a bump is of no use any more.
		thenOps = append(thenOps, clientv3.OpDelete(k.gen))
		waitFor = clientv3.OpGet(k.q, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	} else {
		cond = clientv3.Compare(clientv3.CreateRevision(k.w), "=", 0).WithPrefix()
		waitFor = clientv3.OpGet(k.w, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	}
	var elseOps []clientv3.Op
	if wait {
		elseOps = []clientv3.Op{put, waitFor}
	}

	// The transaction that creates the key is not cancelled with ctx: its
	// outcome must be known, or the key could appear after we gave up
	// (an abandoned request can still be applied) and block the name.
	// The request is queued at all only if the name is in the tree
	// (treeCmps); the queue decision is the nested transaction.
	rctx, cancel := b.opCtx(context.WithoutCancel(ctx))
	resp, err := b.client.Txn(rctx).If(k.treeCmps()...).
		Then(clientv3.OpTxn([]clientv3.Cmp{cond}, thenOps, elseOps)).
		Else(k.treeGets()...).Commit()
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
	if !resp.Succeeded {
		r.release() // nothing was put
		return nil, k.treeErr(resp)
	}
	queued := resp.Responses[0].GetResponseTxn()
	if !queued.Succeeded && !wait {
		r.release()
		return nil, fmt.Errorf("etcdlock: %q %v: %w", k.name, mode, lockengine.ErrWouldBlock)
	}
	// A transaction that writes is applied at one new revision: the
	// create revision of our key.
	at := resp.Header.Revision
	r.rev = at
	if err := ctx.Err(); err != nil {
		b.removeKey(ctx, r)
		return nil, fmt.Errorf("etcdlock: lock %q: %w", k.name, err)
	}
	if queued.Succeeded {
		// Nothing conflicting is queued, so every earlier grant's token is
		// an earlier revision than ours.
		return b.grant(ctx, r, uint64(r.rev), at, lost)
	}
	older := make(map[string]struct{})
	for _, kv := range queued.Responses[1].GetResponseRange().Kvs {
		if kv.CreateRevision < r.rev {
			older[string(kv.Key)] = struct{}{}
		}
	}
	// gen 0: the generation key, if any, was last written before our key
	// was created.
	h, err := b.waitTurn(ctx, r, older, 0, at, lost)
	if err != nil {
		b.removeKey(ctx, r)
		return nil, err
	}
	return h, nil
}

// errWatchEnded: a watch ended before it saw what its caller waited for
// (compaction, a lost connection); the caller takes a new snapshot.
var errWatchEnded = errors.New("watch ended")

// waitTurn waits until request r is granted. As of revision at, older
// holds the keys r waits for (every key of the name created before r's
// for a writer, every such writer key for a reader) and gen is the mod
// revision of the generation key if it was written after r's key was
// created, else 0.
//
// It follows every change of the name from at+1 on in one watch, so when
// the last key r waits for is deleted, r knows it is granted at that
// revision without asking etcd again: keys older than r's can only
// disappear, never appear, and the watch reports every change in revision
// order. If the watch ends early, one transaction takes a new snapshot and
// a new watch continues from it.
func (b *Backend) waitTurn(ctx context.Context, r *request, older map[string]struct{}, gen, at int64, lost func(error)) (*hold, error) {
	s, k := r.s, r.k
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	for {
		if len(older) > 0 {
			b.log.Debug("waiting", "lock", k.name, "mode", r.mode, "behind", len(older))
			var err error
			at, gen, err = b.follow(wctx, r, older, gen, at)
			switch {
			case err == nil:
				return b.grantAt(ctx, r, gen, at, lost)
			case errors.Is(err, errKeyGone):
				return nil, b.keyGone(ctx, r)
			case !errors.Is(err, errWatchEnded):
				return nil, b.requestErr(ctx, s, k.name, "wait", err)
			}
		}
		// Decide on a new snapshot: is our key still there, which keys
		// must we wait for, and when was the generation key last written?
		waitRange := k.q
		if r.mode == lockengine.Shared {
			waitRange = k.w
		}
		rctx, rcancel := b.opCtx(wctx)
		resp, err := b.client.Txn(rctx).If(r.mine()).Then(
			clientv3.OpGet(waitRange, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMaxCreateRev(r.rev-1)),
			clientv3.OpGet(k.gen, clientv3.WithKeysOnly()),
		).Commit()
		rcancel()
		if err != nil {
			return nil, b.requestErr(ctx, s, k.name, "lock", err)
		}
		if !resp.Succeeded {
			return nil, b.keyGone(ctx, r)
		}
		at, gen = resp.Header.Revision, 0
		clear(older)
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			older[string(kv.Key)] = struct{}{}
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			gen = kvs[0].ModRevision
		}
		if len(older) == 0 {
			return b.grantAt(ctx, r, gen, at, lost)
		}
	}
}

// errKeyGone: a waiting request's own key was deleted.
var errKeyGone = errors.New("request key deleted")

// follow watches every key of r's name from revision at+1 on, removing
// keys from older as they are deleted and tracking the generation key's
// last write in gen. It returns the revision at which older became empty
// (r's key still existed then) and gen as of then; errKeyGone if r's key
// was deleted first; errWatchEnded if the watch ended early; or ctx's
// error.
func (b *Backend) follow(ctx context.Context, r *request, older map[string]struct{}, gen, at int64) (int64, int64, error) {
	k := r.k
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := at + 1
	if b.watchFrom != nil {
		from = b.watchFrom(from)
	}
	for wr := range b.client.Watch(wctx, k.base, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if wr.Err() != nil {
			break
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			switch {
			case key == k.gen:
				gen = 0
				if ev.Type == mvccpb.PUT {
					gen = ev.Kv.ModRevision
				}
			case ev.Type != mvccpb.DELETE:
			case key == r.key:
				// Slots make r's key name r's alone until r ends.
				return 0, 0, errKeyGone
			default:
				delete(older, key)
			}
			at = ev.Kv.ModRevision
		}
		if len(older) == 0 {
			return at, gen, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	// Do not spin if watches keep failing.
	if !sleepCtx(ctx, 100*time.Millisecond) {
		return 0, 0, ctx.Err()
	}
	return 0, 0, errWatchEnded
}

// grantAt grants request r, which nothing blocks as of revision at, where
// gen is the generation key's mod revision (0 if missing). Its token is
// the create revision of its key, unless the generation key was written
// after that (a Bump, or a grant like this one): then an earlier grant may
// carry a token above r's create revision, and one more transaction
// writes the generation key to mint a token above every earlier one.
func (b *Backend) grantAt(ctx context.Context, r *request, gen, at int64, lost func(error)) (*hold, error) {
	if gen < r.rev {
		return b.grant(ctx, r, uint64(r.rev), at, lost)
	}
	s := r.s
	rctx, cancel := b.opCtx(ctx)
	resp, err := b.client.Txn(rctx).If(r.mine()).Then(clientv3.OpPut(r.k.gen, b.opts.Owner)).Commit()
	cancel()
	if err != nil {
		return nil, b.requestErr(ctx, s, r.k.name, "lock", err)
	}
	if !resp.Succeeded {
		return nil, b.keyGone(ctx, r)
	}
	return b.grant(ctx, r, uint64(resp.Header.Revision), resp.Header.Revision, lost)
}

// keyGone is the error when a waiting request's key vanished: with the
// session lease (revoked or expired: ErrSessionExpired, and the session
// ends), or deleted by someone while the lease lives (errRequeue: acquire
// queues a new request). One round trip asks etcd which.
func (b *Backend) keyGone(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcdlock: lock %q: %w", r.k.name, err)
	}
	expired := fmt.Errorf("etcdlock: lock %q: %w: waiting key %s vanished", r.k.name, ErrSessionExpired, r.key)
	if r.s.ended() {
		return expired
	}
	tctx, cancel := b.opCtx(ctx)
	ttl, err := b.client.TimeToLive(tctx, r.s.id)
	cancel()
	switch {
	case err != nil:
		return b.requestErr(ctx, r.s, r.k.name, "wait", err)
	case ttl.TTL <= 0:
		r.s.endLeaseGone()
		return expired
	}
	return fmt.Errorf("etcdlock: lock %q: %w: %s", r.k.name, errRequeue, r.key)
}

// errRequeue: a waiting request's key was deleted while its session
// lives; the request is queued again with a new key.
var errRequeue = errors.New("waiting key deleted")

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
	if !b.goBackground(func() { h.watchLoop(wctx, at+1) }) {
		// Closing: Close revokes the session lease, and the key with it.
		s.remove(h)
		cancel()
		b.removeKey(ctx, r)
		return nil, fmt.Errorf("etcdlock: lock %q: %w", r.k.name, lockengine.ErrClosed)
	}
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
	if !b.goBackground(func() { b.removeLoop(r) }) {
		r.release() // closing: Close revokes the session lease
	}
}

// removeLoop is removeLater's background loop; it gives r's slot back when
// it ends.
func (b *Backend) removeLoop(r *request) {
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
}

// reapFor bounds how long reap watches for a late key. A request that
// timed out is applied late, if at all, within a few election timeouts;
// this is far more.
const reapFor = 5 * time.Minute

// reap deletes the key of r, whose creation timed out and may still be
// applied, in the background: now, and again whenever it appears, until
// the session ends (then the session lease takes the key with it) or reapFor
// passes. The create revision is unknown, so the deletes are not
// conditional: r keeps its slot until reap ends, so no later request of
// the session uses the key meanwhile.
func (b *Backend) reap(r *request) {
	b.log.Warn("lock request timed out; reaping its key in the background", "lock", r.k.name, "key", r.key)
	if !b.goBackground(func() { b.reapLoop(r) }) {
		r.release() // closing: Close revokes the session lease
	}
}

// reapLoop is reap's background loop; it gives r's slot back when it
// ends.
func (b *Backend) reapLoop(r *request) {
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
}
