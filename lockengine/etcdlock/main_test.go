package etcdlock_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// The tests run against a real single-node etcd started in-process on
// loopback (shared by the package through TestMain); tests that stop etcd
// start their own.

var (
	endpoint string           // of the shared etcd
	admin    *clientv3.Client // a client of the shared etcd, for inspecting and breaking things
	prefixes atomic.Int64     // makes test prefixes unique
)

// timeout bounds every wait in the tests: generous, for loaded machines.
const timeout = 30 * time.Second

// TestMain runs the tests against a shared etcd and then fails them when
// goroutines outlive them: once etcd and the admin client are closed,
// nothing of the backends (sessions, keepalives, watches) may be left.
func TestMain(m *testing.M) {
	code := runMain(m)
	if code == 0 {
		// No goroutine of etcd's embedded server or client is ignored:
		// none lingers once they are closed.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "etcdlock-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := startEtcd(dir, "", "")
	if err != nil {
		fmt.Fprintln(os.Stderr, "start etcd:", err)
		return 1
	}
	defer srv.Close()
	endpoint = srv.Config().ListenClientUrls[0].String()
	admin, err = clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd client:", err)
		return 1
	}
	defer admin.Close()
	return m.Run()
}

// startEtcd starts etcd with its data in dir, serving clients at clientURL
// and peers at peerURL (free loopback ports when empty), and waits until
// it is ready.
func startEtcd(dir, clientURL, peerURL string) (*embed.Etcd, error) {
	var err error
	if clientURL == "" {
		if clientURL, err = freeURL(); err != nil {
			return nil, err
		}
	}
	if peerURL == "" {
		if peerURL, err = freeURL(); err != nil {
			return nil, err
		}
	}
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "lockfs-test"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true // test data only; keeps a loaded machine fast
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(2 * time.Minute):
		e.Close()
		return nil, fmt.Errorf("etcd in %s not ready", dir)
	}
}

// freeURL returns an http URL on a loopback port that was free a moment ago.
func freeURL() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "http://127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// newPrefix returns a key prefix no other test uses.
func newPrefix() string {
	return fmt.Sprintf("/lockfs-test/%d/", prefixes.Add(1))
}

// newBackend returns a Backend on the shared etcd, closed at the end of the
// test. Zero fields of opts get test defaults (prefix: a fresh one, so
// pass the prefix of another backend to make them exclude each other).
func newBackend(t *testing.T, opts etcdlock.Options) *etcdlock.Backend {
	t.Helper()
	if opts.Endpoints == nil {
		opts.Endpoints = []string{endpoint}
	}
	if opts.Prefix == "" {
		opts.Prefix = newPrefix()
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 10 * time.Second
	}
	b, err := etcdlock.New(context.Background(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// backends returns n Backends on one prefix: n daemons on one cluster.
func backends(t *testing.T, n int, opts etcdlock.Options) (string, []*etcdlock.Backend) {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = newPrefix()
	}
	bs := make([]*etcdlock.Backend, n)
	for i := range bs {
		bs[i] = newBackend(t, opts)
	}
	return opts.Prefix, bs
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// queued counts the request keys (holders and waiters) of name.
func queued(t *testing.T, prefix, name string) int {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+name+"/q/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	return int(resp.Count)
}

// allKeys counts every key of name, the generation key included.
func allKeys(t *testing.T, prefix, name string) int {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	return int(resp.Count)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, timeout, 2*time.Millisecond, "timed out waiting for %s", what)
}

// lostRec records the calls of a lost callback.
type lostRec struct {
	calls atomic.Int32
	err   atomic.Pointer[error]
	ch    chan struct{} // closed on the first call
}

func newLost() *lostRec { return &lostRec{ch: make(chan struct{})} }

func (l *lostRec) fn(err error) {
	if l.calls.Add(1) == 1 {
		l.err.Store(&err)
		close(l.ch)
	}
}

func (l *lostRec) Err() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

type res struct {
	h   lockengine.Hold
	err error
}

// lockAsync starts b.Lock in a goroutine.
func lockAsync(ctx context.Context, b lockengine.Backend, name string, m lockengine.Mode, lost func(error)) <-chan res {
	ch := make(chan res, 1)
	go func() {
		h, err := b.Lock(ctx, name, m, lost)
		ch <- res{h, err}
	}()
	return ch
}

// got waits for a result that must be a grant.
func got(t *testing.T, ch <-chan res) lockengine.Hold {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.h
	case <-time.After(timeout):
		t.Fatal("timed out waiting for a grant")
		return nil
	}
}

// pending asserts that ch has no result yet. It cannot prove a negative;
// callers pair it with a positive check later.
func pending(t *testing.T, ch <-chan res, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: got hold=%v err=%v, want still waiting", what, r.h != nil, r.err)
	case <-time.After(50 * time.Millisecond):
	}
}
