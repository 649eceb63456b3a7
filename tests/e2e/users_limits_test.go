package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// kill -9 of lockfs run kills COMMAND's process group (a grandchild too),
// and a waiter is granted the lock only once they are gone.
func TestRunKill9KillsCommand(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	marker := filepath.Join(t.TempDir(), "marker")
	p := lockfsRun(t, e, "--mount", d.Mountpoint, "x", "--", "sh", "-c",
		`sleep 1000 & echo ready $$ $!; while :; do echo running > "$0"; sleep 0.01; done`, marker)
	f := p.WaitLine("ready", patience)
	require.Len(t, f, 2)
	cmdPid, err := strconv.Atoi(f[0])
	require.NoError(t, err)
	grandchild, err := strconv.Atoi(f[1])
	require.NoError(t, err)
	killGroupAtCleanup(t, cmdPid)
	requireHeld(t, e, d.Path("x"))

	w := e.Waiter(t, d.Path("x"), "w")
	require.NoError(t, unix.Kill(p.Pid(), unix.SIGKILL))
	harness.Granted(t, w, patience)
	// Granted: nothing of COMMAND's group may run any more.
	assert.ErrorIs(t, unix.Kill(cmdPid, 0), unix.ESRCH, "COMMAND still exists when the waiter got the lock")
	assert.ErrorIs(t, unix.Kill(grandchild, 0), unix.ESRCH, "COMMAND's child still exists when the waiter got the lock")
	assert.ErrorIs(t, unix.Kill(-cmdPid, 0), unix.ESRCH, "COMMAND's group still exists when the waiter got the lock")
	// COMMAND no longer writes its marker.
	require.NoError(t, os.Remove(marker))
	harness.Release(t, w)
	_, err = os.Stat(marker)
	assert.ErrorIs(t, err, os.ErrNotExist, "COMMAND wrote its marker after the grant")
}

// A user past a per-user limit gets ENOLCK at once; root and other users
// still lock.
func TestUserLimits(t *testing.T) {
	e := setup(t)
	// The clients run as nobody: the binaries and the mountpoint must be
	// reachable.
	require.NoError(t, os.Chmod(e.Root, 0o711))
	mnt, err := os.MkdirTemp(e.Root, "users-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(mnt, 0o755))
	d := e.StartDaemon(t, harness.DaemonConfig{Mountpoint: mnt, Args: []string{"--name-sweep", "0",
		"--max-held-per-user", "2", "--max-waiting-per-user", "1", "--max-names-per-user", "6"}})
	as := func(uid uint32, mode, path string) *harness.Proc {
		return harness.Start(t, harness.ProcOptions{Name: "lockclient uid " + strconv.Itoa(int(uid)) + " " + path,
			Path: e.Client, Args: []string{"-mode", mode, path}, Credential: &syscall.Credential{Uid: uid, Gid: uid}})
	}
	hold := func(uid uint32, mode, path string) *harness.Proc {
		p := as(uid, mode, path)
		p.WaitLine("granted", patience)
		return p
	}
	refused := func(uid uint32, mode, path string) {
		t.Helper()
		p := as(uid, mode, path)
		f := p.WaitLine("error", patience)
		assert.Equal(t, "ENOLCK", f[0], "uid %d %s", uid, path)
		ns, err := strconv.ParseInt(f[2], 10, 64)
		require.NoError(t, err)
		assert.Less(t, time.Duration(ns), 2*time.Second, "refused at once")
	}

	// held: 2 per user (names used: a, b, c)
	a := hold(65534, "w", d.Path("a"))
	b := hold(65534, "w", d.Path("b"))
	refused(65534, "w", d.Path("c"))
	c := hold(0, "w", d.Path("c"))
	o := hold(65533, "w", d.Path("o"))
	harness.Release(t, a)
	harness.Release(t, b)
	harness.Release(t, o)
	// Their leases, and nobody's held count, go at the RELEASE that follows
	// close(2): until then nobody's wait below would be refused (limit=held).
	waitHolders(t, d.Path("a"), 0)
	waitHolders(t, d.Path("b"), 0)

	// waiting: 1 per user (c is held by root)
	w := as(65534, "w", d.Path("c"))
	w.WaitBlockedInOpen(patience)
	refused(65534, "w", d.Path("c"))
	w2 := as(65533, "w", d.Path("c"))
	w2.WaitBlockedInOpen(patience)
	wr := as(0, "w", d.Path("c"))
	wr.WaitBlockedInOpen(patience)
	harness.Release(t, c)
	harness.Granted(t, w, patience)
	harness.Release(t, w)
	harness.Granted(t, w2, patience)
	harness.Release(t, w2)
	harness.Granted(t, wr, patience)
	harness.Release(t, wr)

	// names: 6 per user; a, b, c so far.
	for _, n := range []string{"d", "e", "f"} {
		harness.Release(t, hold(65534, "r", d.Path(n)))
	}
	refused(65534, "r", d.Path("g"))
	harness.Release(t, hold(65533, "r", d.Path("g")))
	harness.Release(t, hold(0, "r", d.Path("h")))
	log := d.Log()
	assert.Contains(t, log, "per-user limit reached")
	for _, l := range []string{"limit=held", "limit=waiting", "limit=names"} {
		assert.Contains(t, log, l)
	}
	assert.Contains(t, log, "uid=65534")
}

// Names nobody holds or waits on do not keep memory: after 20,000 distinct
// names were opened and closed, the daemon's lock-file inodes go back to
// (near) zero once the sweep has run.
func TestNameMemoryGivenBack(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{LogLevel: "info",
		Args: []string{"--metrics-addr", "127.0.0.1:0", "--name-sweep", "200ms"}})
	url := metricsURL(t, d)

	const n = 20000
	for i := range n {
		fd, err := unix.Open(d.Path("mem"+strconv.Itoa(i)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		require.NoError(t, unix.Close(fd))
	}
	inodes := func() int { return inodesMetric(t, url) }
	// A held name keeps its inode.
	h := e.Hold(t, d.Path("held"), "w")
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := inodes()
		return got <= 10, "lock-file inodes: " + strconv.Itoa(got)
	})
	assert.GreaterOrEqual(t, inodes(), 1, "the held name's inode stays")
	require.Equal(t, "ok", harness.Command(t, h, "fsync"))
	harness.Release(t, h)
}
