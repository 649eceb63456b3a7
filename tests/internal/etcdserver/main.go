// Command etcdserver is a single-node etcd for lockfs tests and benchmarks,
// built on go.etcd.io/etcd/server/v3/embed so that no etcd binary needs to
// be installed (and a static build runs in the offline test image).
//
// Usage:
//
//	etcdserver [-name N] [-data-dir D] [-listen-client URL] [-advertise-client URL]
//	           [-listen-peer URL] [-advertise-peer URL] [-fsync]
//	           [-cert-file F -key-file F [-trusted-ca-file F] [-client-cert-auth]]
//
// Client and peer URLs default to free ports on 127.0.0.1. Listening on
// 0.0.0.0 (inside a container) needs an explicit advertise URL that others
// can reach.
//
// The TLS flags, named as etcd's own, secure the client URLs (peer URLs
// stay plain http); automatic self-signed TLS is never used:
//
//   - -cert-file and -key-file: the server's PEM certificate and key. With
//     them the client URLs are https (the default ones, too; explicit ones
//     must say https://).
//   - -trusted-ca-file: PEM file of the CA that client certificates must be
//     signed by.
//   - -client-cert-auth: require clients to present a certificate signed by
//     -trusted-ca-file.
//
// When the server is ready it prints one line on stdout:
//
//	ready CLIENT_URL
//
// and serves until SIGTERM or SIGINT, then stops cleanly and exits 0. Start
// failures print the cause on stderr and exit 1. The data directory defaults
// to a new temporary directory, removed at exit. Without -fsync the server
// does not fsync (test data only).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func main() {
	os.Exit(run())
}

func run() int {
	name := flag.String("name", "lockfs-test", "member name")
	dataDir := flag.String("data-dir", "", "data directory (default: a new temporary directory, removed at exit)")
	listenClient := flag.String("listen-client", "", "client URL to listen on (default a free port on 127.0.0.1)")
	advClient := flag.String("advertise-client", "", "client URL to advertise (default -listen-client)")
	listenPeer := flag.String("listen-peer", "", "peer URL to listen on (default a free port on 127.0.0.1)")
	advPeer := flag.String("advertise-peer", "", "peer URL to advertise (default -listen-peer)")
	fsync := flag.Bool("fsync", false, "fsync the write-ahead log (off: faster, test data only)")
	readyTimeout := flag.Duration("ready-timeout", 2*time.Minute, "give up when not ready within this time")
	certFile := flag.String("cert-file", "", "PEM server certificate for the client URLs (makes them https)")
	keyFile := flag.String("key-file", "", "PEM private key of -cert-file")
	trustedCA := flag.String("trusted-ca-file", "", "PEM file of the CA that signs client certificates")
	clientCertAuth := flag.Bool("client-cert-auth", false, "require client certificates signed by -trusted-ca-file")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "etcdserver: no arguments expected")
		return 2
	}
	tlsOn := *certFile != ""
	if tlsOn != (*keyFile != "") {
		fmt.Fprintln(os.Stderr, "etcdserver: -cert-file and -key-file go together")
		return 2
	}
	if !tlsOn && (*trustedCA != "" || *clientCertAuth) {
		fmt.Fprintln(os.Stderr, "etcdserver: -trusted-ca-file and -client-cert-auth need -cert-file")
		return 2
	}
	if *clientCertAuth && *trustedCA == "" {
		fmt.Fprintln(os.Stderr, "etcdserver: -client-cert-auth needs -trusted-ca-file")
		return 2
	}
	clientScheme := "http"
	if tlsOn {
		clientScheme = "https"
	}

	// Catch signals before starting, so none is lost in between.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	dir := *dataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "etcdserver-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "etcdserver:", err)
			return 1
		}
		defer os.RemoveAll(d)
		dir = d
	}
	urls, err := urlsOrFree([]string{clientScheme, "http"}, *listenClient, *listenPeer)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		return 2
	}
	cu, pu := urls[0], urls[1]
	if cu.Scheme != clientScheme {
		fmt.Fprintf(os.Stderr, "etcdserver: -listen-client %s: want an %s:// URL (https exactly with -cert-file)\n",
			cu, clientScheme)
		return 2
	}
	acu, apu := cu, pu
	if *advClient != "" {
		if acu, err = url.Parse(*advClient); err != nil {
			fmt.Fprintln(os.Stderr, "etcdserver: -advertise-client:", err)
			return 2
		}
	}
	if *advPeer != "" {
		if apu, err = url.Parse(*advPeer); err != nil {
			fmt.Fprintln(os.Stderr, "etcdserver: -advertise-peer:", err)
			return 2
		}
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*acu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*apu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = !*fsync
	cfg.ClientAutoTLS = false
	cfg.ClientTLSInfo.CertFile = *certFile
	cfg.ClientTLSInfo.KeyFile = *keyFile
	cfg.ClientTLSInfo.TrustedCAFile = *trustedCA
	cfg.ClientTLSInfo.ClientCertAuth = *clientCertAuth
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver: start:", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcdserver: serve:", err)
		return 1
	case sig := <-sigs:
		fmt.Fprintln(os.Stderr, "etcdserver: stopped by", sig, "before ready")
		return 0
	case <-time.After(*readyTimeout):
		fmt.Fprintln(os.Stderr, "etcdserver: not ready within", *readyTimeout)
		return 1
	}
	fmt.Printf("ready %s\n", acu.String())
	select {
	case sig := <-sigs:
		fmt.Fprintln(os.Stderr, "etcdserver: stopping on", sig)
		return 0
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcdserver: serve:", err)
		return 1
	}
}

// urlsOrFree parses each of ss, or for an empty one picks a URL with the
// scheme schemes[i] on a free 127.0.0.1 port (distinct from the others
// picked).
func urlsOrFree(schemes []string, ss ...string) ([]*url.URL, error) {
	out := make([]*url.URL, len(ss))
	for i, s := range ss {
		if s == "" {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			// Kept open until all are picked, so no two get one port.
			defer l.Close()
			s = schemes[i] + "://127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out[i] = u
	}
	return out, nil
}
