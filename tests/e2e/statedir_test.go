package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// grantToken opens path for writing as root through the mount, reads the
// fencing token of the grant, releases the lock and returns the token.
func grantToken(t *testing.T, e *harness.Env, path string) uint64 {
	t.Helper()
	p, token := tokenHolder(t, e, path, false)
	tok, err := strconv.ParseUint(token, 10, 64)
	require.NoError(t, err, "token %q", token)
	p.Send("release")
	p.WaitLine("closed", patience)
	return tok
}

// asNobodyOutput runs argv as uid/gid 65534 without groups and returns its
// combined output and exit error.
func asNobodyOutput(t *testing.T, argv ...string) (string, error) {
	t.Helper()
	args := append([]string{"--reuid", nobodyID, "--regid", nobodyID, "--clear-groups", "--"}, argv...)
	out, err := exec.Command(setprivPath(t), args...).CombinedOutput()
	return string(out), err
}

// An unprivileged user cannot reach the state directory of a root daemon:
// flock on a lock file (which needs only a read-only descriptor) fails with
// EACCES, and neither names nor tokens can be read.
func TestStateDirPrivate(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	grantToken(t, e, d.Path("deploy"))
	lock := filepath.Join(d.StateDir, "locks", "deploy")
	require.FileExists(t, lock)

	out, err := asNobodyOutput(t, "flock", "-x", "-n", lock, "true")
	require.Error(t, err, "flock as nobody succeeded: %s", out)
	assert.Contains(t, out, "Permission denied", "flock as nobody")
	for _, argv := range [][]string{
		{"cat", lock},
		{"cat", filepath.Join(d.StateDir, "guard")},
		{"cat", filepath.Join(d.StateDir, "epoch")},
		{"ls", filepath.Join(d.StateDir, "locks")},
	} {
		out, err := asNobodyOutput(t, argv...)
		require.Error(t, err, "%v as nobody succeeded: %s", argv, out)
		assert.Contains(t, out, "Permission denied", "%v as nobody", argv)
	}
	for _, p := range []string{d.StateDir, filepath.Join(d.StateDir, "locks")} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "mode of %s", p)
	}
	fi, err := os.Stat(lock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "mode of %s", lock)
	// The lock still works through the mount (once grantToken's lease is
	// gone: it goes at the RELEASE that follows the holder's close).
	waitHolders(t, d.Path("deploy"), 0)
	assert.Equal(t, "granted", probe(t, e, d.Path("deploy"), "w"))
}

// A daemon on a state directory owned by another user exits 1 with the
// documented message and mounts nothing.
func TestStateDirForeignOwnerRefused(t *testing.T) {
	e := setup(t)
	state := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	require.NoError(t, os.Chown(state, 65534, 65534))
	mnt := t.TempDir()
	d := e.SpawnDaemon(t, harness.DaemonConfig{StateDir: state, Mountpoint: mnt})
	assert.Equal(t, 1, d.Wait(patience), "exit code; log:\n%s", d.Log())
	assert.Contains(t, d.Log(), "unsafe state directory: "+state+" is owned by uid 65534, but lockfs runs as uid 0")
	assert.Contains(t, d.Log(), "chown -R 0 "+state)
	mounted, err := harness.IsLockfsMounted(mnt)
	require.NoError(t, err)
	assert.False(t, mounted, "mounted despite the refused state directory")
	entries, err := os.ReadDir(state)
	require.NoError(t, err)
	assert.Empty(t, entries, "the daemon created files in a directory it refused")
}

// A daemon restarted on a state directory whose token records were rolled
// back (older contents, as after a power loss that lost unsynced writes)
// hands out tokens above every earlier one.
func TestStateDirTokensAfterRollback(t *testing.T) {
	e := setup(t)
	state := t.TempDir()
	d := e.StartDaemon(t, harness.DaemonConfig{StateDir: state})
	first := grantToken(t, e, d.Path("x"))
	lock := filepath.Join(state, "locks", "x")
	old, err := os.ReadFile(lock)
	require.NoError(t, err)
	high := first
	for range 3 {
		tok := grantToken(t, e, d.Path("x"))
		require.Greater(t, tok, high, "tokens of one daemon increase")
		high = tok
	}
	d.Signal(unix.SIGTERM)
	require.Equal(t, 0, d.Wait(patience))

	require.NoError(t, os.WriteFile(lock, old, 0o600))
	require.NoError(t, os.Truncate(filepath.Join(state, "guard"), 0))

	d2 := e.StartDaemon(t, harness.DaemonConfig{StateDir: state})
	for _, name := range []string{"x", "y"} {
		tok := grantToken(t, e, d2.Path(name))
		assert.Greater(t, tok, high, "token of %q after the restart", name)
		t.Logf("%s: %d (highest before the restart %d)", name, tok, high)
	}
}
