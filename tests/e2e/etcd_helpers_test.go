package e2e

import (
	"context"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// The etcd tests run a real single-node etcd (tests/internal/etcdserver, a
// small program on etcd's embed package) as a subprocess per test, on free
// loopback ports with its data in the test's temporary directory; it is
// killed by pid when the test ends.

var (
	etcdBuildOnce sync.Once
	etcdBin       string
	etcdBuildErr  error
)

// etcdServerBin builds tests/internal/etcdserver once per test process.
func etcdServerBin(t *testing.T, e *harness.Env) string {
	t.Helper()
	etcdBuildOnce.Do(func() {
		etcdBin = filepath.Join(e.Root, "bin", "etcdserver")
		etcdBuildErr = harness.Build(etcdBin, "github.com/lockfs/lockfs/tests/internal/etcdserver")
	})
	require.NoError(t, etcdBuildErr)
	return etcdBin
}

// etcdServer is a running etcdserver subprocess.
type etcdServer struct {
	Proc    *harness.Proc
	URL     string // client URL
	peerURL string
	dataDir string
}

// startEtcd starts an etcd server for t on free loopback ports and waits
// until it serves.
func startEtcd(t *testing.T, e *harness.Env) *etcdServer {
	t.Helper()
	urls := freeLoopbackURLs(t, 2)
	return startEtcdAt(t, e, filepath.Join(t.TempDir(), "etcd"), urls[0], urls[1])
}

// startEtcdAt starts an etcd server with its data in dataDir serving
// clients at clientURL and peers at peerURL, and waits until it serves.
func startEtcdAt(t *testing.T, e *harness.Env, dataDir, clientURL, peerURL string) *etcdServer {
	t.Helper()
	bin := etcdServerBin(t, e)
	p := harness.Start(t, harness.ProcOptions{Name: "etcdserver", Path: bin,
		Args: []string{"-data-dir", dataDir, "-listen-client", clientURL, "-listen-peer", peerURL}})
	f := p.WaitLine("ready", 2*time.Minute)
	require.Equal(t, clientURL, f[0])
	return &etcdServer{Proc: p, URL: f[0], peerURL: peerURL, dataDir: dataDir}
}

// startEtcdWith starts an etcd server for t with extra etcdserver flags
// (such as the TLS ones: with -cert-file its client URL is https) on ports
// that etcdserver picks, and waits until it serves. Such a server cannot be
// restarted.
func startEtcdWith(t *testing.T, e *harness.Env, extra ...string) *etcdServer {
	t.Helper()
	bin := etcdServerBin(t, e)
	dataDir := filepath.Join(t.TempDir(), "etcd")
	p := harness.Start(t, harness.ProcOptions{Name: "etcdserver", Path: bin,
		Args: append([]string{"-data-dir", dataDir}, extra...)})
	f := p.WaitLine("ready", 2*time.Minute)
	return &etcdServer{Proc: p, URL: f[0], dataDir: dataDir}
}

// Restart starts a stopped server again on the same data and URLs.
func (s *etcdServer) Restart(t *testing.T, e *harness.Env) *etcdServer {
	t.Helper()
	require.True(t, s.Proc.Exited(), "restart of a running etcd")
	return startEtcdAt(t, e, s.dataDir, s.URL, s.peerURL)
}

// Stop kills the server (as a crash or a partition would look to clients)
// and waits until it has exited.
func (s *etcdServer) Stop(t *testing.T) {
	t.Helper()
	s.Proc.SignalGroup(unix.SIGKILL)
	s.Proc.Wait(patience)
}

// client returns an etcd client of s for inspection, closed when t ends.
func (s *etcdServer) client(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.URL}, DialTimeout: patience, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// etcdDaemonConfig returns a daemon configuration for the etcd engine on s
// under prefix with the given TTL (0: the default) and extra flags.
func etcdDaemonConfig(s *etcdServer, prefix string, ttl time.Duration, extra ...string) harness.DaemonConfig {
	args := []string{"--engine", "etcd", "--etcd-endpoints", s.URL, "--etcd-prefix", prefix}
	if ttl > 0 {
		args = append(args, "--etcd-ttl", ttl.String())
	}
	return harness.DaemonConfig{Args: append(args, extra...)}
}

// etcdPair starts two daemons on s with one prefix: two hosts on one
// cluster.
func etcdPair(t *testing.T, e *harness.Env, s *etcdServer, ttl time.Duration, extra ...string) (a, b *harness.Daemon, prefix string) {
	t.Helper()
	prefix = "/lockfs-e2e/" + sanitizeName(t.Name()) + "/"
	c := etcdDaemonConfig(s, prefix, ttl, extra...)
	return e.StartDaemon(t, c), e.StartDaemon(t, c), prefix
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

func sanitizeName(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

// requestKeys returns the values (the owners, "host:pid") of the request
// keys of name under prefix: its holders and waiters.
func requestKeys(t *testing.T, c *clientv3.Client, prefix, name string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	resp, err := c.Get(ctx, prefix+name+"/q/", clientv3.WithPrefix())
	require.NoError(t, err)
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Value))
	}
	return out
}

// freeLoopbackURLs returns n distinct http URLs on loopback ports nobody
// listens on (free a moment ago).
func freeLoopbackURLs(t *testing.T, n int) []string {
	t.Helper()
	var urls []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close() // held until all are picked: no port twice
		urls = append(urls, "http://127.0.0.1:"+strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return urls
}

// ownerSuffix returns how the owner that daemon d writes into its etcd
// keys ("host:pid") ends.
func ownerSuffix(d *harness.Daemon) string { return ":" + strconv.Itoa(d.Pid()) }

func hasSuffixAll(vals []string, suffix string) bool {
	for _, v := range vals {
		if !strings.HasSuffix(v, suffix) {
			return false
		}
	}
	return true
}

// requireRisingTokens takes the exclusive lock "tok" on daemons a, b, a, b
// in turn and requires each grant's fencing token (user.lockfs.token, read
// through the holder's own daemon while it holds) to be larger than the one
// before.
func requireRisingTokens(t *testing.T, e *harness.Env, a, b *harness.Daemon) {
	t.Helper()
	var prev uint64
	for i, d := range []*harness.Daemon{a, b, a, b} {
		p := e.Hold(t, d.Path("tok"), "w")
		tok, err := strconv.ParseUint(lockXattr(t, d.Path("tok"), "user.lockfs.token"), 10, 64)
		require.NoError(t, err, "grant %d: token xattr", i)
		require.Greater(t, tok, prev, "grant %d (daemon %d): token not above the previous grant's", i, i%2)
		prev = tok
		harness.Release(t, p)
		waitFree(t, e, d.Path("tok"))
	}
}
