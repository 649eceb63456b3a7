// Package etcdlock is a lockengine.Backend that excludes lock holders on
// many hosts through etcd (official client, go.etcd.io/etcd/client/v3).
//
// # Sessions
//
// A Backend keeps one etcd lease, its session lease,, granted with Options.TTL
// and renewed every TTL/3 with a keepalive. The session counts as alive
// only while the session lease is proven alive: after each renewal the backend
// knows the session lease lives at least until the time the renewal was SENT plus
// the granted TTL (etcd restarts the TTL when it receives the request,
// which is later). When that moment passes without a newer renewal, or
// when etcd says the session lease is gone (revoked or expired), the session ends:
// the lost callback of every Hold granted under it is called at once (from
// another goroutine) with an error wrapping lockengine.ErrLost and
// ErrSessionExpired, waiting Lock calls fail with ErrSessionExpired, and
// the session lease is revoked on a best-effort basis so the names free up as soon
// as etcd can be reached. Each Hold also watches its own key: if anyone
// but Unlock deletes it (an administrator, or etcd when it revokes or
// expires the session lease), that Hold is lost at once with ErrKeyDeleted and the
// lease is checked immediately (a Bump that finds the key gone first ends
// the Hold the same way). A waiting Lock whose key someone deletes while
// the session lives loses its place, not its wait: it queues a new key at
// the back. A session never comes back:
// the next Lock or TryLock starts a new session (a new lease), bounded by
// Options.OpTimeout, and fails with ErrUnavailable if etcd cannot be reached.
// Grants made under an old session are never carried over.
//
// # Keys
//
// Every request for name NAME puts one key, attached to the session lease:
//
//	P/NAME/q/w/<lease-hex>-<slot>   an exclusive request (writer)
//	P/NAME/q/r/<lease-hex>-<slot>   a shared request (reader)
//	P/NAME/gen                      the generation key (see Tokens)
//
// P is Options.Prefix. In keys, NAME is the name's encoding, in which '%'
// is "%25" and '/' is "%2F" ("team/deploy" is team%2Fdeploy; names without
// '%' and '/' are their own encoding, so the keys of top-level names are
// those of earlier versions). <slot> is the smallest number not used by another
// request of the session for the name, so requests in progress at the same
// time on one session have keys of their own (unlike concurrency.Mutex,
// whose key is prefix + lease), and a name's keys are reused from request
// to request (so etcd's index does not grow with every request until the
// next compaction). A request's key is created once, by the request, and
// its create revision identifies the request: every later decision,
// update and delete of the request is conditional on that create revision,
// so nothing done for one request can touch a later one that reuses the
// key name. The encoding of a name has no '/', so P/NAME/ never prefixes
// the keys of another name.
//
// # Lock directories
//
// Lock directory DIR (lockengine.Tree) is one key without a lease,
// P/%dirs/DIR (DIR encoded like names; no encoding starts with "%d", so
// no name's keys are under P/%dirs/), whose value holds its attributes:
// "lockfs-dir1 uid=U gid=G mode=MODE mtime=NS" (mode in octal, mtime in
// Unix nanoseconds of the daemon that made the last change). Every change
// is one transaction whose comparisons make it atomic with every request
// of every daemon:
//
//   - a request's key is put only if its parent's directory key exists
//     (top-level names have none) and no directory key exists at the
//     name, else nothing is put and the lock fails with
//     lockengine.ErrNoDir or lockengine.ErrIsDir;
//   - Mkdir puts P/%dirs/DIR only if its parent's key exists, its own does
//     not, and no key with a lease (a request, held or waiting, of any
//     daemon) exists under P/DIR/ (else ErrNoDir, ErrExist);
//   - Rmdir deletes P/%dirs/DIR only if it exists, no key exists under
//     P/%dirs/DIR%2F (subdirectories) and no key with a lease exists
//     under P/DIR%2F (requests for names below it, held or waiting, of any
//     daemon; else ErrNoDir, ErrNotEmpty);
//   - SetDirAttr rewrites the key only if it exists; StatDir reads it;
//     ReadDir reads the keys under P/%dirs/DIR%2F (keys only) in a
//     transaction that checks that DIR exists.
//
// Generation keys have no lease: one left behind (see Tokens) does not
// keep a name from becoming a directory nor a directory from being
// removed; Mkdir and Rmdir delete such keys at the path and below it,
// whose queues are empty then, as when a request deletes one (Tokens).
//
// The queue is ordered by create revision. A writer is granted when no key
// under P/NAME/q/ has a smaller create revision; a reader is granted when
// no writer key has a smaller create revision. The transaction that puts a
// request's key also reads, on the same snapshot, whether it is granted at
// once and otherwise which keys it waits for. A waiter then follows every
// change of P/NAME/ in one watch from the next revision on: keys older
// than its own can only disappear, and the watch reports every change in
// revision order, so the waiter knows the revision at which the last key
// it waits for was deleted while its own still existed, and is granted
// there without asking etcd again (concurrency.Mutex reads the queue once
// more at that point). If the watch ends early (compaction, a lost
// connection), one transaction takes a new snapshot that also checks that
// the waiter's own key still exists. Why this never admits two holders:
// for a writer W and any other holder H, the one with the larger create
// revision was granted only once the other's key was gone (the other's
// key existed at the revision it was granted at otherwise), so their hold
// periods, from grant to key deletion, are disjoint. A reader that arrives
// after a waiting writer queues behind it, so writers are not starved, and
// consecutive readers are granted together.
//
// # Tokens
//
// A grant's token is the create revision of its key, unless the generation
// key P/NAME/gen was written after that key was created: then the grant
// writes the generation key once more, and the revision of that write is
// its token. Bump (used by lock breaks and by the second and later holders
// of a semaphore) writes the generation key the same way and returns that
// revision. Why tokens of conflicting grants strictly increase, on any
// host: of two conflicting grants, the later one's key is younger than the
// earlier one's (FIFO, above), so its create revision is larger than the
// earlier token unless that token came from a write of the generation key;
// such a write happened after the later key's creation only if the later
// grant saw it (the generation key is deleted only when the queue is empty,
// and is attached to no lease, so it cannot vanish while a request waits),
// and then the later grant writes it again. Granting at once needs nothing
// but the transaction that puts the key, and handing over to a waiter
// needs no transaction at all, unless a Bump happened meanwhile. A shared
// grant's token is larger than the token of every earlier exclusive grant
// and smaller than that of every later one; shared holders granted
// together carry different tokens (in one daemon they share one request,
// and so one token). The generation key is deleted by the last request of
// the name when it unlocks, or by the next exclusive request that finds
// the queue empty, so an unused name leaves no keys behind (unless its
// last holder died after a Bump: then one generation key stays until the
// name is used again).
//
// # Holds
//
// A Hold's Valid reports synchronously whether the grant is still provably
// held; it turns false as soon as the session lease's proven lifetime has
// run out, even before the lost callback has run.
//
// # Recovery time
//
// When a daemon dies, or is cut off from etcd, its keys and so its locks
// disappear when etcd expires its session lease: at most TTL after the last
// renewal etcd received, so at most TTL after the death (plus an etcd
// leader election, if one happens meanwhile: a new leader extends every
// lease). A cut-off daemon reports its holds lost no later than etcd can
// expire them, because it counts the TTL from when it sent the renewal.
// A daemon that shuts down with Close revokes its session lease: its names are
// free at once.
package etcdlock

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lockfs/lockfs/lockengine"
)

// Sentinel errors. Returned errors wrap them together with the lock name
// and the underlying cause; tell them apart with errors.Is.
var (
	// ErrUnavailable: etcd could not be reached, or did not answer within
	// Options.OpTimeout (Options.DialTimeout when connecting in New).
	ErrUnavailable = errors.New("etcdlock: etcd unavailable")
	// ErrSessionExpired: the session lease could no longer be proven alive
	// (not renewed in time, revoked or expired). Lost holds wrap it
	// together with lockengine.ErrLost; Lock calls waiting under the
	// session return it.
	ErrSessionExpired = errors.New("etcdlock: session expired")
	// ErrKeyDeleted: the key of a grant was deleted by anyone but its
	// holder: an administrator (etcdctl del), or etcd itself when the session lease
	// was revoked or expired (then the session ends too). Lost holds wrap
	// it together with lockengine.ErrLost.
	ErrKeyDeleted = errors.New("etcdlock: lock key deleted")
)

// Defaults for zero Options fields.
const (
	// DefaultPrefix is the default key prefix.
	DefaultPrefix = "/lockfs/"
	// DefaultTTL is the default session lease TTL.
	DefaultTTL = 10 * time.Second
	// DefaultDialTimeout is the default bound on connecting in New.
	DefaultDialTimeout = 5 * time.Second
	// DefaultOpTimeout is the default bound on each request to etcd.
	DefaultOpTimeout = 5 * time.Second
)

// Options configure a Backend. Zero fields take the defaults above.
type Options struct {
	// Endpoints are the etcd client URLs, e.g. "http://10.0.0.1:2379".
	// At least one is required.
	Endpoints []string
	// Prefix is prepended to every key; a trailing '/' is added if
	// missing. Backends exclude each other only if they use the same
	// Prefix on the same cluster. Default DefaultPrefix.
	Prefix string
	// TTL is the session lease's time to live, rounded up to whole seconds
	// (etcd may raise it to its minimum, typically 2 s). It bounds how long
	// the names of a dead daemon stay taken. Default DefaultTTL.
	TTL time.Duration
	// DialTimeout bounds connecting to etcd in New. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// OpTimeout bounds each request to etcd, including starting a new
	// session; a request that times out fails with ErrUnavailable. It does
	// not bound waiting for another holder. Default DefaultOpTimeout.
	OpTimeout time.Duration
	// TLS, if not nil, is used for connections to etcd (https endpoints).
	TLS *tls.Config
	// Username and Password, if Username is set, authenticate to etcd.
	Username, Password string
	// Owner is stored as the value of every key this backend puts, for
	// inspection with etcdctl. Default "hostname:pid".
	Owner string
	// Logger receives the backend's log records; nil discards them.
	Logger *slog.Logger
}

// Backend is a lockengine.Backend on etcd. Create it with New; it is safe
// for concurrent use, also for several requests on one name (each request
// has its own key), although lockengine.Queue makes at most one at a time.
type Backend struct {
	client *clientv3.Client
	opts   Options // defaults applied
	log    *slog.Logger
	ttlSec int64

	root       context.Context // cancelled by Close
	cancelRoot context.CancelFunc

	mu     sync.Mutex
	closed bool           // guarded by mu
	wg     sync.WaitGroup // calls in progress and background goroutines; Add only through track, under mu

	// watchFrom, if set (by tests only), chooses the revision a waiter's
	// watch starts at instead of the one after its snapshot.
	watchFrom func(from int64) int64
	// holdWatchGate, if set (by tests only), is waited for by every
	// hold's watch before it starts.
	holdWatchGate <-chan struct{}

	sessMu   sync.Mutex
	sess     *session      // guarded by sessMu; the current session
	starting *sessionStart // guarded by sessMu; a session being started, if any
}

var _ lockengine.Backend = (*Backend)(nil)

// New connects to etcd and starts a session. It fails with an error
// wrapping ErrUnavailable when etcd cannot be reached within
// Options.DialTimeout (or before ctx ends); ctx bounds only New itself.
func New(ctx context.Context, opts Options) (*Backend, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("etcdlock: no etcd endpoints given")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = DefaultOpTimeout
	}
	if opts.Owner == "" {
		host, _ := os.Hostname()
		opts.Owner = host + ":" + strconv.Itoa(os.Getpid())
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:            opts.Endpoints,
		DialTimeout:          opts.DialTimeout,
		DialKeepAliveTime:    opts.OpTimeout,
		DialKeepAliveTimeout: opts.OpTimeout,
		TLS:                  opts.TLS,
		Username:             opts.Username,
		Password:             opts.Password,
		Logger:               zap.NewNop(),
		// Reconnect soon after etcd comes back, not after gRPC's
		// default backoff of up to two minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: opts.DialTimeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcdlock: connect to %v: %w: %w", opts.Endpoints, ErrUnavailable, err)
	}
	b := &Backend{
		client: client,
		opts:   opts,
		log:    log,
		ttlSec: int64((opts.TTL + time.Second - 1) / time.Second),
	}
	b.root, b.cancelRoot = context.WithCancel(context.Background())
	dctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	s, err := b.newSession(dctx)
	if err != nil {
		b.cancelRoot()
		_ = client.Close()
		return nil, fmt.Errorf("etcdlock: connect to %v: %w", opts.Endpoints, err)
	}
	b.sess = s
	return b, nil
}

// Close stops the backend: calls in progress fail with lockengine.ErrClosed,
// and the session lease is revoked, which releases every Hold still
// outstanding at once (their lost callbacks are not called: the caller is
// closing them). Close is idempotent; it returns an error wrapping
// ErrUnavailable if the session lease could not be revoked, in which case the keys
// expire with the lease TTL.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()

	b.cancelRoot() // aborts waits, stops keepalive and watch loops
	b.wg.Wait()

	b.sessMu.Lock()
	s := b.sess
	b.sess = nil
	b.sessMu.Unlock()
	var err error
	if s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), b.opts.OpTimeout)
		_, rerr := b.client.Revoke(ctx, s.id)
		cancel()
		if rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("etcdlock: close: revoke lease %x: %w", int64(s.id), b.classify(rerr))
			b.log.Warn("cannot revoke lease; keys expire with its ttl", "lease", leaseHex(s.id), "err", rerr)
		}
	}
	if cerr := b.client.Close(); cerr != nil && err == nil && !errors.Is(cerr, context.Canceled) {
		err = fmt.Errorf("etcdlock: close client: %w", cerr)
	}
	return err
}

// track counts a call or background goroutine in b.wg. It returns false
// once Close has begun. It is the only way anything is counted: the check
// of closed and the Add happen under mu, so no Add can follow Close's
// Wait.
func (b *Backend) track() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Add(1)
	return true
}

// opCtx bounds one request by ctx and OpTimeout.
func (b *Backend) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.opts.OpTimeout)
}

// classify wraps a request error in ErrUnavailable when it means etcd
// could not be reached or did not answer in time.
func (b *Backend) classify(err error) error {
	if isUnavailable(err) {
		// The cause as text: an internal request timeout must not look
		// like the caller's own cancellation (which the filesystem maps to
		// EINTR).
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}

// isUnavailable reports whether err means "no answer from etcd": a
// timeout, no connection, no leader.
func isUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrLeaderChanged):
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	return false
}

// requestErr turns the error of a request made for a Lock or TryLock call
// into what the caller gets: ctx's error when the caller gave up,
// ErrClosed when the backend is closing, ErrSessionExpired when the
// session ended, otherwise the cause (wrapped in ErrUnavailable when it
// means etcd did not answer).
func (b *Backend) requestErr(ctx context.Context, s *session, name, op string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("etcdlock: %s %q: %w", op, name, ctx.Err())
	case b.root.Err() != nil:
		return fmt.Errorf("etcdlock: %s %q: %w", op, name, lockengine.ErrClosed)
	case s != nil && s.ended():
		return fmt.Errorf("etcdlock: %s %q: %w", op, name, s.cause())
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("etcdlock: %s %q: %w: %w", op, name, ErrSessionExpired, err)
	}
	return fmt.Errorf("etcdlock: %s %q: %w", op, name, b.classify(err))
}

// goBackground runs f in a goroutine counted in b.wg and reports true,
// or reports false and does nothing once Close has begun.
func (b *Backend) goBackground(f func()) bool {
	if !b.track() {
		return false
	}
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

func leaseHex(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }
