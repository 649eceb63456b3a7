package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Engine flags are parsed with the mount flags and checked before anything
// is mounted: inconsistent combinations are usage errors.
func TestBackendFlagsCheck(t *testing.T) {
	mnt := t.TempDir()
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"--engine", "dir"}, true},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://127.0.0.1:2379"}, true},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://a:2379, http://b:2379", "--etcd-ttl", "2s",
			"--etcd-prefix", "/x/"}, true},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "https://a:2379", "--etcd-cacert", "ca.pem"}, true},
		{[]string{"--engine", "zookeeper"}, false},
		{[]string{"--engine", "etcd"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "a:2379"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://a:2379", "--etcd-ttl", "500ms"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://a:2379", "--etcd-cacert", "ca.pem"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "https://a:2379", "--etcd-cert", "c.pem"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://a:2379", "--etcd-prefix", "/"}, false},
		{[]string{"--engine", "etcd", "--etcd-endpoints", "http://a:2379", "--etcd-op-timeout", "0s"}, false},
		{[]string{"--etcd-endpoints", "http://a:2379"}, false}, // etcd flags without --engine etcd
	} {
		cfg, err := parseMountArgs(append(append([]string{}, c.args...), mnt))
		require.NoError(t, err, "%q", c.args)
		err = cfg.backend.check()
		if c.ok {
			assert.NoError(t, err, "%q", c.args)
			continue
		}
		var ue usageError
		assert.True(t, errors.As(err, &ue), "%q: want a usage error, got %v", c.args, err)
	}
}

// TLS flags load the CA and client files; missing or bad files are errors.
func TestBackendTLSConfig(t *testing.T) {
	ef := backendFlags{kind: backendEtcd, endpoints: "http://a:2379"}
	tc, err := ef.tlsConfig()
	require.NoError(t, err)
	assert.Nil(t, tc, "plain http without TLS flags")

	ef.endpoints = "https://a:2379"
	tc, err = ef.tlsConfig()
	require.NoError(t, err)
	require.NotNil(t, tc, "https uses TLS with the system roots")
	assert.Nil(t, tc.RootCAs)

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	require.NoError(t, os.WriteFile(bad, []byte("not a certificate"), 0o600))
	ef.caCert = bad
	_, err = ef.tlsConfig()
	assert.ErrorContains(t, err, "no PEM certificate")
	ef.caCert = filepath.Join(dir, "missing.pem")
	_, err = ef.tlsConfig()
	assert.ErrorIs(t, err, os.ErrNotExist)
	ef.caCert, ef.cert, ef.key = "", bad, bad
	_, err = ef.tlsConfig()
	assert.Error(t, err, "bad client key pair")
}

// The non-root default state directory is persistent per-user state
// ($XDG_STATE_HOME, else ~/.local/state), never the tmpfs
// $XDG_RUNTIME_DIR; root keeps /var/lib/lockfs.
func TestDefaultStateDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	t.Setenv("XDG_STATE_HOME", "/home/u/.state")
	t.Setenv("HOME", "/home/u")
	check := func(euid int, want string) {
		t.Helper()
		got, err := defaultStateDirFor(euid)
		if err != nil || got != want {
			t.Errorf("defaultStateDirFor(%d) = %q, %v; want %q", euid, got, err, want)
		}
	}
	check(0, "/var/lib/lockfs")
	check(1000, "/home/u/.state/lockfs")
	t.Setenv("XDG_STATE_HOME", "")
	check(1000, "/home/u/.local/state/lockfs")
	t.Setenv("HOME", "")
	if _, err := defaultStateDirFor(1000); err == nil {
		t.Error("no error without XDG_STATE_HOME and HOME")
	}
}
