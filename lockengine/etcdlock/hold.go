package etcdlock

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
)

// hold states.
const (
	held int32 = iota
	unlocked
	lost
)

// hold is one granted request: its key exists in etcd until Unlock, the
// session's end, or someone else deletes it.
type hold struct {
	r     *request
	token atomic.Uint64
	lost  func(error)

	state     atomic.Int32
	stopWatch context.CancelFunc

	once      sync.Once
	unlockErr error // set once by Unlock
}

var _ lockengine.Hold = (*hold)(nil)

// Token implements lockengine.Hold: the fencing token of the grant (see
// the package documentation).
func (h *hold) Token() uint64 { return h.token.Load() }

// Bump implements lockengine.Hold for exclusive grants: it writes the
// generation key while the grant's key still exists, and the revision of
// that write is the new token. Requests queued before the write see it
// when they are granted and take a token above it (see grantAt).
func (h *hold) Bump() (uint64, error) {
	r := h.r
	if r.mode != lockengine.Exclusive || !h.Valid() {
		return 0, fmt.Errorf("etcdlock: bump %q: %w", r.k.name, lockengine.ErrNotHeld)
	}
	b := r.s.b
	ctx, cancel := b.opCtx(b.root)
	defer cancel()
	resp, err := b.client.Txn(ctx).If(r.mine()).
		Then(clientv3.OpPut(r.k.gen, b.opts.Owner)).Commit()
	if err != nil {
		return 0, fmt.Errorf("etcdlock: bump %q: %w", r.k.name, err)
	}
	if !resp.Succeeded {
		// The key is gone: deleted by someone else, or with the session
		// lease. The watch reports it too, but maybe not yet; end the
		// hold now so that Valid is false when Bump returns (the Queue
		// then treats the grant as lost, not the bump as failed). The
		// lost callback runs in the background: the Queue's waits for
		// this Bump.
		h.keyDeleted("key "+r.key+" gone (bump)", true)
		return 0, fmt.Errorf("etcdlock: bump %q: %w", r.k.name, lockengine.ErrNotHeld)
	}
	tok := uint64(resp.Header.Revision)
	h.token.Store(tok)
	return tok, nil
}

// Valid reports whether the grant still stands as far as this process can
// prove: not unlocked, not reported lost, and the session lease renewed
// recently enough that etcd cannot have expired it. It may turn false
// before the lost callback runs (for example right after the process was
// stopped past the TTL and continued); a caller about to act under the
// lock's protection can check it synchronously.
func (h *hold) Valid() bool {
	return h.state.Load() == held && h.r.s.alive()
}

// Unlock implements lockengine.Hold: it deletes the grant's key (and the
// generation key when no other request for the name is queued). It is
// idempotent: later calls return the first call's result. If etcd cannot
// be reached it returns an error wrapping ErrUnavailable and keeps trying
// in the background until the key is gone or the session ends.
func (h *hold) Unlock() error {
	h.once.Do(func() { h.unlockErr = h.unlock() })
	return h.unlockErr
}

func (h *hold) unlock() error {
	if !h.state.CompareAndSwap(held, unlocked) {
		return nil // lost: the key is gone, or goes with the lease
	}
	r := h.r
	r.s.remove(h)
	h.stopWatch()
	b := r.s.b
	if r.s.ended() {
		r.release()
		return nil // lease ended or revoked (Close): its keys go with it
	}
	// Delete our key only if it is still this request's (a delete applied
	// late must not hit a later request's key); delete the generation key
	// too if ours is the last request of the name.
	ctx, cancel := context.WithTimeout(b.root, b.opts.OpTimeout)
	defer cancel()
	_, err := b.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.k.q), "=", r.rev).WithPrefix()).
		Then(clientv3.OpDelete(r.key), clientv3.OpDelete(r.k.gen)).
		Else(clientv3.OpTxn([]clientv3.Cmp{r.mine()}, []clientv3.Op{clientv3.OpDelete(r.key)}, nil)).
		Commit()
	if err != nil {
		if b.root.Err() != nil {
			r.release()
			return nil // Close revokes the lease
		}
		b.removeLater(r)
		return fmt.Errorf("etcdlock: unlock %q: %w", r.k.name, b.classify(err))
	}
	r.release()
	b.log.Debug("lock released", "lock", r.k.name, "mode", r.mode, "token", h.token.Load())
	return nil
}

// lose reports the hold lost with cause, unless it was unlocked or lost
// already.
func (h *hold) lose(cause error) {
	if err := h.end(cause); err != nil {
		h.lost(err)
	}
}

// keyDeleted reports the hold lost because its key is gone (ErrKeyDeleted,
// with detail) and pokes the session: lease expiry or revocation deletes
// the key too, and the session must find out at once. The hold is ended
// (Valid false) when it returns; with background set, the lost callback
// runs through goBackground, so not at all once the backend is closing,
// as session.end's callbacks.
func (h *hold) keyDeleted(detail string, background bool) {
	h.r.s.check()
	err := h.end(fmt.Errorf("%w: %s", ErrKeyDeleted, detail))
	switch {
	case err == nil:
	case background:
		h.r.s.b.goBackground(func() { h.lost(err) })
	default:
		h.lost(err)
	}
}

// end marks the hold lost with cause and cleans up after it; it returns
// the error for the lost callback, or nil when the hold was unlocked or
// lost already.
func (h *hold) end(cause error) error {
	if !h.state.CompareAndSwap(held, lost) {
		return nil
	}
	r := h.r
	r.s.remove(h)
	h.stopWatch()
	r.release() // the key is gone (or goes with the lease)
	err := fmt.Errorf("etcdlock: %q: %w: %w", r.k.name, lockengine.ErrLost, cause)
	r.s.b.log.Warn("lock lost", "lock", r.k.name, "mode", r.mode, "token", h.token.Load(), "err", err)
	return err
}

// watchLoop reports the hold lost when its key is deleted by anyone but
// Unlock, from revision from on. It ends when ctx (stopWatch) ends.
func (h *hold) watchLoop(ctx context.Context, from int64) {
	r := h.r
	b := r.s.b
	if b.holdWatchGate != nil {
		select {
		case <-b.holdWatchGate:
		case <-ctx.Done():
			return
		}
	}
	for ctx.Err() == nil {
		wch := b.client.Watch(ctx, r.key, clientv3.WithRev(from), clientv3.WithFilterPut())
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					if ctx.Err() != nil {
						return
					}
					h.keyDeleted(fmt.Sprintf("key %s deleted at revision %d", r.key, ev.Kv.ModRevision), false)
					return
				}
			}
		}
		if ctx.Err() != nil {
			return
		}
		// The watch ended without the event (compaction, reconnect):
		// look at the key itself and watch again from there.
		gctx, cancel := b.opCtx(ctx)
		resp, err := b.client.Get(gctx, r.key)
		cancel()
		switch {
		case err != nil:
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return
			}
		case len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != r.rev:
			h.keyDeleted("key "+r.key+" gone", false)
			return
		default:
			from = resp.Header.Revision + 1
		}
	}
}

// sleepCtx waits for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
