package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockfs/lockfs/lockengine"
)

// session is one session lease kept alive by keepAliveLoop. It ends once; a
// Backend then starts a new one for later requests.
type session struct {
	b   *Backend
	id  clientv3.LeaseID
	ttl time.Duration // as granted by etcd

	// ctx is cancelled when the session ends or the backend closes; waits
	// and watches under the session derive from it.
	ctx    context.Context
	cancel context.CancelFunc
	poke   chan struct{} // buffered(1): renew now to learn if the lease lives
	slots  slots         // names request keys

	mu    sync.Mutex
	holds map[*hold]struct{} // guarded by mu; grants not yet unlocked or lost
	err   error              // guarded by mu; why the session ended, nil while alive
	until time.Time          // guarded by mu; the lease is proven alive until then
}

// newSession grants a lease and starts keeping it alive. ctx bounds the
// grant request.
func (b *Backend) newSession(ctx context.Context) (*session, error) {
	sent := time.Now()
	resp, err := b.client.Grant(ctx, b.ttlSec)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", b.classify(err))
	}
	s := &session{
		b:     b,
		id:    resp.ID,
		ttl:   time.Duration(resp.TTL) * time.Second,
		poke:  make(chan struct{}, 1),
		holds: make(map[*hold]struct{}),
		until: sent.Add(time.Duration(resp.TTL) * time.Second),
	}
	s.ctx, s.cancel = context.WithCancel(b.root)
	if !b.goBackground(func() { s.keepAliveLoop(s.until) }) {
		// Closing: give the new lease back at once.
		s.cancel()
		rctx, cancel := context.WithTimeout(context.Background(), b.opts.OpTimeout)
		_, _ = b.client.Revoke(rctx, s.id)
		cancel()
		return nil, lockengine.ErrClosed
	}
	b.log.Info("etcd session started", "lease", leaseHex(s.id), "ttl", s.ttl)
	return s, nil
}

// sessionStart is a session being started for callers of Backend.session.
type sessionStart struct {
	done chan struct{} // closed when s or err is set
	s    *session
	err  error
}

// session returns the current session, starting a new one if there is
// none or it has ended. Concurrent callers share one start, bounded by
// OpTimeout; each stops waiting for it when its ctx ends.
func (b *Backend) session(ctx context.Context) (*session, error) {
	b.sessMu.Lock()
	if s := b.sess; s != nil && !s.ended() {
		b.sessMu.Unlock()
		return s, nil
	}
	if b.root.Err() != nil {
		b.sessMu.Unlock()
		return nil, lockengine.ErrClosed
	}
	st := b.starting
	if st == nil {
		st = &sessionStart{done: make(chan struct{})}
		started := b.goBackground(func() {
			gctx, cancel := context.WithTimeout(b.root, b.opts.OpTimeout)
			s, err := b.newSession(gctx)
			cancel()
			b.sessMu.Lock()
			if err == nil {
				b.sess = s
			}
			b.starting = nil
			st.s, st.err = s, err
			b.sessMu.Unlock()
			close(st.done)
		})
		if !started {
			b.sessMu.Unlock()
			return nil, lockengine.ErrClosed
		}
		b.starting = st
	}
	b.sessMu.Unlock()
	select {
	case <-st.done:
		if st.err != nil {
			if b.root.Err() != nil {
				return nil, lockengine.ErrClosed
			}
			return nil, fmt.Errorf("new session: %w", st.err)
		}
		return st.s, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("new session: %w", ctx.Err())
	}
}

// keepAliveLoop renews the session lease every ttl/3 (sooner after a failure or a
// poke) and ends the session when the session lease can no longer be proven alive.
// deadline is the time until which the session lease is known to live.
func (s *session) keepAliveLoop(deadline time.Time) {
	interval := s.ttl / 3
	retry := min(interval, 500*time.Millisecond)
	expiry := time.NewTimer(time.Until(deadline))
	defer expiry.Stop()
	next := time.NewTimer(interval)
	defer next.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-expiry.C:
			s.end(fmt.Errorf("%w: lease %s not renewed within its ttl %v", ErrSessionExpired, leaseHex(s.id), s.ttl))
			return
		case <-s.poke:
		case <-next.C:
		}
		sent := time.Now()
		if !sent.Before(deadline) {
			s.end(fmt.Errorf("%w: lease %s not renewed within its ttl %v", ErrSessionExpired, leaseHex(s.id), s.ttl))
			return
		}
		stop := sent.Add(s.b.opts.OpTimeout)
		if deadline.Before(stop) {
			stop = deadline
		}
		ctx, cancel := context.WithDeadline(s.ctx, stop)
		resp, err := s.b.client.KeepAliveOnce(ctx, s.id)
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(time.Duration(resp.TTL) * time.Second)
			s.mu.Lock()
			s.until = deadline
			s.mu.Unlock()
			expiry.Reset(time.Until(deadline))
			next.Reset(interval)
		case s.ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.end(fmt.Errorf("%w: lease %s revoked or expired", ErrSessionExpired, leaseHex(s.id)))
			return
		default:
			s.b.log.Warn("cannot renew etcd lease", "lease", leaseHex(s.id), "err", err,
				"proven_until", deadline.Format(time.RFC3339Nano))
			next.Reset(retry)
		}
	}
}

// check asks the keepalive loop to renew at once, to find out quickly
// whether the session lease still lives.
func (s *session) check() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// endLeaseGone ends the session because etcd does not know its lease
// any more.
func (s *session) endLeaseGone() {
	s.end(fmt.Errorf("%w: lease %s not found", ErrSessionExpired, leaseHex(s.id)))
}

// end ends the session because of cause (wrapping ErrSessionExpired): every
// hold is reported lost (from another goroutine), waits under the session
// stop, and the session lease is revoked in the background in case etcd still
// keeps it. Only the first call has an effect.
func (s *session) end(cause error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = cause
	holds := s.holds
	s.holds = nil
	s.mu.Unlock()
	s.cancel()
	s.b.log.Warn("etcd session ended", "lease", leaseHex(s.id), "holds", len(holds), "err", cause)
	// Lost callbacks run on a goroutine of their own: end may be called
	// by a Lock or TryLock whose caller holds locks the callbacks take.
	// Once Close has begun nothing runs: Close revokes the session lease, and the
	// lost callbacks of a closing backend are not called.
	s.b.goBackground(func() {
		for h := range holds {
			h.lose(cause)
		}
		s.revokeLoop()
	})
}

// revokeLoop revokes the session lease of an ended session, retrying for a while:
// if etcd still keeps the session lease (the session ended because etcd could not
// be reached, or etcd restarted and restored it), revoking frees its keys
// before the TTL runs out.
func (s *session) revokeLoop() {
	giveUp := time.Now().Add(3*s.ttl + s.b.opts.OpTimeout)
	for {
		ctx, cancel := context.WithTimeout(s.b.root, s.b.opts.OpTimeout)
		_, err := s.b.client.Revoke(ctx, s.id)
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) || time.Now().After(giveUp) {
			return
		}
		if !sleepCtx(s.b.root, 500*time.Millisecond) {
			return
		}
	}
}

// ended reports whether the session has ended (or the backend is closing).
func (s *session) ended() bool { return s.ctx.Err() != nil }

// cause returns why the session ended: an error wrapping ErrSessionExpired,
// or lockengine.ErrClosed when the backend closed.
func (s *session) cause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.ctx.Err() != nil {
		return lockengine.ErrClosed
	}
	return nil
}

// alive reports whether the session lease is proven alive now: the session has
// not ended and its last renewal covers the present (the keepalive loop may
// not have noticed a missed deadline yet, e.g. right after SIGCONT).
func (s *session) alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds != nil && s.ctx.Err() == nil && time.Now().Before(s.until)
}

// add registers h so that it is lost when the session ends. It returns
// false when the session has ended or its session lease is not proven alive.
func (s *session) add(h *hold) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds == nil || s.ctx.Err() != nil || !time.Now().Before(s.until) {
		return false
	}
	s.holds[h] = struct{}{}
	return true
}

func (s *session) remove(h *hold) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.holds, h)
}
