package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// Backend names accepted by --engine: the flag keeps its name, what it
// picks is the Queue's backend.
const (
	backendDir  = "dir"  // flock(2) on files in --state-dir: one host
	backendEtcd = "etcd" // etcd sessions and keys: many hosts
)

// backendFlags are the flags of 'lockfs mount' that choose and configure the
// backend of the lock engine: --engine and --etcd-*.
type backendFlags struct {
	kind        string // --engine: backendDir or backendEtcd
	endpoints   string // comma-separated etcd client URLs
	prefix      string
	ttl         time.Duration
	dialTimeout time.Duration
	opTimeout   time.Duration
	caCert      string
	cert, key   string
}

// registerBackendFlags adds the backend flags to fl, storing into ef.
func registerBackendFlags(fl *flag.FlagSet, ef *backendFlags) {
	fl.StringVar(&ef.kind, "engine", backendDir,
		"lock engine: dir (flock on files in --state-dir, one host) or etcd (an etcd cluster, many hosts)")
	fl.StringVar(&ef.endpoints, "etcd-endpoints", "",
		"etcd client URLs, comma-separated (http://host:2379,...); required with --engine etcd")
	fl.StringVar(&ef.prefix, "etcd-prefix", etcdlock.DefaultPrefix,
		"etcd key prefix; daemons exclude each other only with the same prefix on the same cluster")
	fl.DurationVar(&ef.ttl, "etcd-ttl", etcdlock.DefaultTTL,
		"etcd session lease TTL (whole seconds, at least 2s in practice): the names of a dead or cut-off daemon "+
			"free up at most this long after its last renewal, and its holders see EIO by then")
	fl.DurationVar(&ef.dialTimeout, "etcd-dial-timeout", etcdlock.DefaultDialTimeout,
		"bound on connecting to etcd at start; unreachable etcd is an error and nothing is mounted")
	fl.DurationVar(&ef.opTimeout, "etcd-op-timeout", etcdlock.DefaultOpTimeout,
		"bound on each request to etcd; an open that cannot reach etcd fails with EIO after it")
	fl.StringVar(&ef.caCert, "etcd-cacert", "", "PEM file of the CA that signed the etcd servers' certificates (enables TLS)")
	fl.StringVar(&ef.cert, "etcd-cert", "", "PEM client certificate for etcd (TLS client authentication; needs --etcd-key)")
	fl.StringVar(&ef.key, "etcd-key", "", "PEM private key of --etcd-cert")
}

// endpointList splits --etcd-endpoints.
func (ef *backendFlags) endpointList() []string {
	var out []string
	for e := range strings.SplitSeq(ef.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// check returns a usage error for inconsistent backend flags.
func (ef *backendFlags) check() error {
	tlsSet := ef.caCert != "" || ef.cert != "" || ef.key != ""
	switch ef.kind {
	case backendDir:
		if ef.endpoints != "" || tlsSet || ef.prefix != etcdlock.DefaultPrefix {
			return usageErrorf("mount: --etcd-* flags need --engine etcd")
		}
		return nil
	case backendEtcd:
	default:
		return usageErrorf("mount: --engine %q: want %s or %s", ef.kind, backendDir, backendEtcd)
	}
	eps := ef.endpointList()
	if len(eps) == 0 {
		return usageErrorf("mount: --engine etcd needs --etcd-endpoints URL[,URL...]")
	}
	for _, e := range eps {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return usageErrorf("mount: --etcd-endpoints: %q is not an http:// or https:// URL", e)
		}
		if u.Scheme == "http" && tlsSet {
			return usageErrorf("mount: --etcd-endpoints: %q is plain http but TLS flags are given", e)
		}
	}
	if ef.ttl < time.Second {
		return usageErrorf("mount: --etcd-ttl must be at least 1s, got %v", ef.ttl)
	}
	if ef.dialTimeout <= 0 || ef.opTimeout <= 0 {
		return usageErrorf("mount: --etcd-dial-timeout and --etcd-op-timeout must be positive")
	}
	if (ef.cert == "") != (ef.key == "") {
		return usageErrorf("mount: --etcd-cert and --etcd-key go together")
	}
	if strings.Trim(ef.prefix, "/") == "" {
		return usageErrorf("mount: --etcd-prefix %q: want a non-empty prefix such as /lockfs/", ef.prefix)
	}
	return nil
}

// tlsConfig returns the TLS configuration for etcd, nil when no TLS flag
// (and no https endpoint) asks for it.
func (ef *backendFlags) tlsConfig() (*tls.Config, error) {
	https := false
	for _, e := range ef.endpointList() {
		if strings.HasPrefix(e, "https://") {
			https = true
		}
	}
	if !https && ef.caCert == "" && ef.cert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ef.caCert != "" {
		pem, err := os.ReadFile(ef.caCert)
		if err != nil {
			return nil, fmt.Errorf("mount: --etcd-cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mount: --etcd-cacert %s: no PEM certificate in it", ef.caCert)
		}
		cfg.RootCAs = pool
	}
	if ef.cert != "" {
		pair, err := tls.LoadX509KeyPair(ef.cert, ef.key)
		if err != nil {
			return nil, fmt.Errorf("mount: --etcd-cert/--etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// stateDirPerm is the mode of a state directory (and of missing parents)
// that lockfs creates: the daemon's alone, since any user who can open a
// lock file can flock it and hold the name outside lockfs.
const stateDirPerm = 0o700

// defaultStateDir is /var/lib/lockfs as root, else persistent per-user
// state: $XDG_STATE_HOME/lockfs, or $HOME/.local/state/lockfs. Not
// $XDG_RUNTIME_DIR: it is a tmpfs, and the epoch that keeps tokens
// increasing across restarts must survive a reboot.
func defaultStateDir() (string, error) { return defaultStateDirFor(os.Geteuid()) }

// defaultStateDirFor is defaultStateDir for the effective uid euid.
func defaultStateDirFor(euid int) (string, error) {
	if euid == 0 {
		return "/var/lib/lockfs", nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "lockfs"), nil
	}
	if h := os.Getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "state", "lockfs"), nil
	}
	return "", errors.New("no default state directory: neither XDG_STATE_HOME nor HOME is set")
}

// defaultStateDirHelp describes defaultStateDir for --help.
func defaultStateDirHelp() string {
	return "/var/lib/lockfs as root, else $XDG_STATE_HOME/lockfs or $HOME/.local/state/lockfs"
}

// openBackend builds the backend that cfg's flags ask for: the dir backend
// on the backing directory (created if missing) or the etcd backend with
// its session. An etcd
// that cannot be reached within --etcd-dial-timeout is an error wrapping
// etcdlock.ErrUnavailable, so nothing gets mounted.
func openBackend(cfg mountConfig, root bool, logger *slog.Logger) (lockengine.Backend, error) {
	ef := &cfg.backend
	if err := ef.check(); err != nil {
		return nil, err
	}
	if ef.kind == backendDir {
		if err := os.MkdirAll(cfg.stateDir, stateDirPerm); err != nil {
			return nil, fmt.Errorf("mount: state dir: %w", err)
		}
		b, err := dirlock.Open(cfg.stateDir, dirlock.Options{
			Heartbeat:     cfg.heartbeat,
			TakeoverAfter: cfg.takeoverAfter,
			Logger:        logger,
		})
		if err != nil {
			return nil, fmt.Errorf("mount: %w", err)
		}
		logger.Info("lock engine ready", "engine", backendDir, "state_dir", cfg.stateDir)
		return b, nil
	}
	tc, err := ef.tlsConfig()
	if err != nil {
		return nil, err
	}
	eps := ef.endpointList()
	// New bounds itself by --etcd-dial-timeout; the context is a backstop.
	ctx, cancel := context.WithTimeout(context.Background(), ef.dialTimeout+ef.opTimeout)
	defer cancel()
	b, err := etcdlock.New(ctx, etcdlock.Options{
		Endpoints:   eps,
		Prefix:      ef.prefix,
		TTL:         ef.ttl,
		DialTimeout: ef.dialTimeout,
		OpTimeout:   ef.opTimeout,
		TLS:         tc,
		Logger:      logger,
	})
	if err != nil {
		if errors.Is(err, etcdlock.ErrUnavailable) {
			// etcd's client reports a rejected TLS handshake only as a
			// timeout; name the TLS failure instead of "unreachable".
			if terr := diagnoseTLS(eps, tc, ef.dialTimeout); terr != nil {
				return nil, fmt.Errorf("mount: TLS with etcd failed: %v; not mounting: %w", terr, err)
			}
			return nil, fmt.Errorf("mount: etcd at %s is unreachable (within --etcd-dial-timeout %v); not mounting: %w",
				strings.Join(eps, ","), ef.dialTimeout, err)
		}
		return nil, fmt.Errorf("mount: etcd backend: %w", err)
	}
	logger.Info("lock engine ready", "engine", backendEtcd, "endpoints", strings.Join(eps, ","),
		"prefix", ef.prefix, "ttl", ef.ttl)
	return b, nil
}

// diagnoseTLS returns why TLS with tc fails at the https endpoints among
// eps, or nil when tc is nil or no endpoint shows a TLS failure (one that
// cannot be connected to, or does not answer in time, is unreachable, not a
// TLS failure). It takes at most about timeout.
//
// A server that rejects the certificate chain fails the handshake; one that
// rejects the client's certificate (or its absence) under TLS 1.3 sends its
// alert after the handshake, so a handshake that succeeds is followed by a
// read until the server sends something (an HTTP/2 server's SETTINGS),
// closes, alerts, or the time is up.
func diagnoseTLS(eps []string, tc *tls.Config, timeout time.Duration) error {
	if tc == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var msgs []string
	for _, ep := range eps {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			continue
		}
		cfg := tc.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"h2"}
		c := tls.Client(raw, cfg)
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		err = c.HandshakeContext(ctx)
		if err == nil {
			var b [1]byte
			_, err = c.Read(b[:])
		}
		_ = c.Close()
		var ne net.Error
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded) ||
			(errors.As(err, &ne) && ne.Timeout()) {
			continue
		}
		msgs = append(msgs, ep+": "+err.Error())
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}
