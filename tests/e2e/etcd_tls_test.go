package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// The TLS tests run etcd with TLS on its client URL and client-certificate
// authentication, all certificates made by the test: a CA, a server
// certificate for 127.0.0.1 and localhost, and a client certificate.

// testCA is a certificate authority made for one test.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM string // path of its PEM certificate
}

// newTestCA makes a self-signed CA named cn and writes its certificate to
// dir/cn.pem.
func newTestCA(t *testing.T, dir, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	path := filepath.Join(dir, cn+".pem")
	writePEM(t, path, "CERTIFICATE", der)
	return &testCA{cert: cert, key: key, certPEM: path}
}

// issue makes a certificate for cn signed by ca, for a server (with the
// loopback SANs; also usable as a client, as etcd's own gateway dials
// itself with it) or for a client, and writes it and its key to
// dir/cn.pem and dir/cn-key.pem, whose paths it returns.
func (ca *testCA) issue(t *testing.T, dir, cn string, server bool) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certPath, keyPath = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, "PRIVATE KEY", keyDER)
	return certPath, keyPath
}

func serialNumber(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	require.NoError(t, err)
	return n
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

// tlsEtcd is an etcd server that requires TLS and client certificates,
// with the files a client needs.
type tlsEtcd struct {
	*etcdServer
	dir                   string // where the certificates are
	ca                    *testCA
	clientCert, clientKey string
}

// startTLSEtcd makes a CA, a server and a client certificate and starts
// etcd serving https on loopback, requiring client certificates of that CA.
func startTLSEtcd(t *testing.T, e *harness.Env) *tlsEtcd {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "lockfs-test-ca")
	srvCert, srvKey := ca.issue(t, dir, "etcd-server", true)
	cliCert, cliKey := ca.issue(t, dir, "lockfs-client", false)
	s := startEtcdWith(t, e, "-cert-file", srvCert, "-key-file", srvKey,
		"-trusted-ca-file", ca.certPEM, "-client-cert-auth")
	require.True(t, strings.HasPrefix(s.URL, "https://127.0.0.1:"), "etcd client URL %s", s.URL)
	return &tlsEtcd{etcdServer: s, dir: dir, ca: ca, clientCert: cliCert, clientKey: cliKey}
}

// daemonFlags returns the lockfs TLS flags of a well-configured client.
func (s *tlsEtcd) daemonFlags() []string {
	return []string{"--etcd-cacert", s.ca.certPEM, "--etcd-cert", s.clientCert, "--etcd-key", s.clientKey}
}

// tlsClient returns an etcd client of s over TLS with the client
// certificate, for inspection, closed when t ends.
func (s *tlsEtcd) tlsClient(t *testing.T) *clientv3.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(s.clientCert, s.clientKey)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.URL}, DialTimeout: patience, Logger: zap.NewNop(),
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Two daemons on one etcd over TLS with client certificates exclude each
// other: a waiter on B is granted only when the holder on A releases, their
// request keys are in that etcd, and fencing tokens increase across them.
func TestEtcdTLSTwoDaemonsExclude(t *testing.T) {
	e := setup(t)
	s := startTLSEtcd(t, e)
	a, b, prefix := etcdPair(t, e, s.etcdServer, 0, s.daemonFlags()...)
	cl := s.tlsClient(t)
	for _, d := range []*harness.Daemon{a, b} {
		assert.Contains(t, d.WaitLog(patience, "lock engine ready"), "endpoints="+s.URL)
	}

	h := e.Hold(t, a.Path("x"), "w")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "w"), "exclusive on B while A holds")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "r"), "shared on B while A holds")
	w := e.Waiter(t, b.Path("x"), "w")
	stayBlocked(t, w, 300*time.Millisecond)
	// Both requests are keys in the TLS etcd: A's holder and B's waiter.
	harness.Eventually(t, patience, func() (bool, string) {
		keys := requestKeys(t, cl, prefix, "x")
		var fromA, fromB int
		for _, k := range keys {
			switch {
			case strings.HasSuffix(k, ownerSuffix(a)):
				fromA++
			case strings.HasSuffix(k, ownerSuffix(b)):
				fromB++
			}
		}
		return len(keys) == 2 && fromA == 1 && fromB == 1,
			"request keys of x (want one of holder pid " + strconv.Itoa(a.Pid()) + " and one of waiter pid " +
				strconv.Itoa(b.Pid()) + "): " + strings.Join(keys, ",")
	})
	released := harness.Release(t, h)
	granted := harness.Granted(t, w, patience)
	t.Logf("cross-daemon handoff through etcd over TLS: %s", ms(granted-released))
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "r"), "shared on A while B holds")
	harness.Release(t, w)
	waitFree(t, e, a.Path("x"))

	// Fencing tokens: exclusive grants of one name alternate between the
	// daemons, each token larger than the last.
	requireRisingTokens(t, e, a, b)
}

// Bad TLS input fails clearly at start: a daemon that does not trust the
// server's CA, or has no client certificate for a server that requires one,
// exits 1 within its dial timeout (plus slack), names etcd, the endpoint and
// the TLS failure in its log, and mounts nothing. An https endpoint where
// nothing listens is still reported as unreachable, not as a TLS failure.
func TestEtcdTLSBadInputFailsClearly(t *testing.T) {
	e := setup(t)
	s := startTLSEtcd(t, e)
	otherCA := newTestCA(t, s.dir, "other-ca")
	const dialTimeout = 2 * time.Second
	nowhere := "https" + strings.TrimPrefix(freeLoopbackURLs(t, 1)[0], "http")
	cases := []struct {
		name     string
		endpoint string
		flags    []string
		want     []string // in the log besides the endpoint
		notWant  string
	}{
		{"UntrustedServerCA", s.URL,
			[]string{"--etcd-cacert", otherCA.certPEM, "--etcd-cert", s.clientCert, "--etcd-key", s.clientKey},
			[]string{"TLS with etcd failed", "x509: certificate signed by unknown authority"}, "unreachable"},
		{"NoClientCert", s.URL,
			[]string{"--etcd-cacert", s.ca.certPEM},
			[]string{"TLS with etcd failed", "tls: certificate required"}, "unreachable"},
		{"Unreachable", nowhere,
			s.daemonFlags(),
			[]string{"etcd at " + nowhere + " is unreachable"}, "TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := harness.DaemonConfig{Args: append([]string{"--engine", "etcd", "--etcd-endpoints", tc.endpoint,
				"--etcd-dial-timeout", dialTimeout.String()}, tc.flags...)}
			start := time.Now()
			d := e.SpawnDaemon(t, c)
			require.Equal(t, 1, d.Wait(dialTimeout+patience), "exit code; log:\n%s", d.Log())
			t.Logf("failed after %v: %s", time.Since(start).Round(time.Millisecond), d.Log())
			assert.False(t, d.Mounted(), "mounted although etcd cannot be used")
			log := d.Log()
			assert.NotContains(t, log, "msg=mounted")
			assert.Contains(t, log, "lockfs: mount:", "the error line")
			assert.Contains(t, log, tc.endpoint, "the error names the endpoint")
			for _, w := range tc.want {
				assert.Contains(t, log, w, "the error names the cause")
			}
			assert.NotContains(t, log, tc.notWant, "the error names the wrong cause")
		})
	}
}
