package e2e

import (
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// lockfsRun starts `lockfs run ARGS...` (it does not wait).
func lockfsRun(t *testing.T, e *harness.Env, args ...string) *harness.Proc {
	t.Helper()
	return harness.Start(t, harness.ProcOptions{Name: "lockfs run", Path: e.Lockfs, Args: append([]string{"run"}, args...)})
}

// killGroupAtCleanup kills the process group pgid (the command lockfs run
// started in its own group) when the test ends, in case it is still there.
func killGroupAtCleanup(t *testing.T, pgid int) {
	t.Cleanup(func() { _ = unix.Kill(-pgid, unix.SIGKILL) })
}

// lockfs run passes the command's exit status (or 128+signal) through,
// exports LOCKFS_TOKEN and LOCKFS_NAME, does not leak the lock descriptor,
// and exits with -E CODE (default 1) when -n or -w cannot get the lock.
func TestRunExitCodes(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	m := d.Mountpoint

	p := lockfsRun(t, e, "--mount", m, "x", "--", "sh", "-c",
		`echo "env $LOCKFS_TOKEN $LOCKFS_NAME"; for f in /proc/$$/fd/*; do echo "fd $f $(readlink $f)"; done; exit 7`)
	assert.Equal(t, 7, p.Wait(patience), "the command's exit status: %s", p.Stderr())
	env := p.WaitLine("env", patience)
	require.Len(t, env, 2)
	tok, err := strconv.ParseUint(env[0], 10, 64)
	require.NoError(t, err, "LOCKFS_TOKEN %q", env[0])
	assert.NotZero(t, tok)
	assert.Equal(t, "x", env[1])
	for _, l := range p.Lines() {
		if strings.HasPrefix(l, "fd ") {
			assert.NotContains(t, l, m, "the lock descriptor leaked into the command")
		}
	}
	waitFree(t, e, d.Path("x"))

	// An absolute path into the mount, without "--"; death by a signal.
	p = lockfsRun(t, e, d.Path("x"), "sh", "-c", `kill -TERM $$`)
	assert.Equal(t, 128+int(unix.SIGTERM), p.Wait(patience), "killed by SIGTERM: %s", p.Stderr())

	// Conflicts.
	h := e.Hold(t, d.Path("x"), "w")
	p = lockfsRun(t, e, "--mount", m, "-n", "x", "--", "true")
	assert.Equal(t, 1, p.Wait(patience), "-n conflict: %s", p.Stderr())
	p = lockfsRun(t, e, "--mount", m, "-n", "-E", "9", "x", "--", "true")
	assert.Equal(t, 9, p.Wait(patience), "-n -E 9 conflict")
	p = lockfsRun(t, e, "--mount", m, "-w", "0.2", "-E", "3", "x", "--", "true")
	assert.Equal(t, 3, p.Wait(patience), "-w 0.2 -E 3 conflict")
	p = lockfsRun(t, e, "--mount", m, "-s", "-n", "x", "--", "true")
	assert.Equal(t, 1, p.Wait(patience), "-s -n against an exclusive holder")
	harness.Release(t, h)

	// Shared runs share.
	r := e.Hold(t, sharedPath(d.Path("s")), "r")
	p = lockfsRun(t, e, "--mount", m, "-s", "-n", "s", "--", "true")
	assert.Equal(t, 0, p.Wait(patience), "-s -n while shared: %s", p.Stderr())
	harness.Release(t, r)

	// Other errors.
	p = lockfsRun(t, e, "--mount", m, "x", "--", "/nonexistent/command")
	assert.Equal(t, 127, p.Wait(patience), "command not found")
	p = lockfsRun(t, e, "--mount", m, "x")
	assert.Equal(t, 64, p.Wait(patience), "usage: no command")
	p = lockfsRun(t, e, "--mount", t.TempDir(), "x", "--", "true")
	assert.Equal(t, 66, p.Wait(patience), "not a lockfs mount")
	assert.Contains(t, p.Stderr(), "not a lockfs mount")
}

// SIGTERM (and the others) sent to lockfs run reaches the command's process
// group; lockfs run then returns the command's status.
func TestRunForwardsSignals(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP} {
		name := unix.SignalName(sig)
		p := lockfsRun(t, e, "--mount", d.Mountpoint, "sig", "--", "sh", "-c",
			`trap 'echo got `+name+`; exit 3' `+strings.TrimPrefix(name, "SIG")+`; echo ready $$; while :; do sleep 0.05; done`)
		f := p.WaitLine("ready", patience)
		pgid, err := strconv.Atoi(f[0])
		require.NoError(t, err)
		killGroupAtCleanup(t, pgid)
		requireHeld(t, e, d.Path("sig"))
		p.Signal(sig)
		p.WaitLine("got", patience)
		assert.Equal(t, 3, p.Wait(patience), "%s forwarded: status of the command's trap", name)
		waitFree(t, e, d.Path("sig"))
	}
}

// When the lock is broken while the command runs, the command's group gets
// SIGTERM (then SIGKILL after --kill-grace if it ignores it) and lockfs run
// exits 75.
func TestRunKillOnLoss(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--lock-delay", "100ms"}})

	p := lockfsRun(t, e, "--mount", d.Mountpoint, "--kill-grace", "30s", "x", "--", "sh", "-c",
		`trap 'echo got TERM; exit 0' TERM; echo ready $$; while :; do sleep 0.05; done`)
	f := p.WaitLine("ready", patience)
	pgid, err := strconv.Atoi(f[0])
	require.NoError(t, err)
	killGroupAtCleanup(t, pgid)
	rm := e.Bash(t, `rm "$X"`, "X="+d.Path("x"))
	require.Equal(t, 0, rm.Wait(patience), "rm as root: %s", rm.Stderr())
	p.WaitLine("got", patience)
	assert.Equal(t, 75, p.Wait(patience), "lock lost: %s", p.Stderr())
	assert.Contains(t, p.Stderr(), "lost")

	// A command that ignores SIGTERM is killed after the grace period.
	p = lockfsRun(t, e, "--mount", d.Mountpoint, "--kill-grace", "200ms", "y", "--", "sh", "-c",
		`trap '' TERM; echo ready $$; while :; do sleep 0.05; done`)
	f = p.WaitLine("ready", patience)
	pgid, err = strconv.Atoi(f[0])
	require.NoError(t, err)
	killGroupAtCleanup(t, pgid)
	require.NoError(t, unix.Unlink(d.Path("y")))
	assert.Equal(t, 75, p.Wait(patience), "lock lost, command killed: %s", p.Stderr())
	harness.Eventually(t, patience, func() (bool, string) {
		return unix.Kill(pgid, 0) != nil, "the command still runs after SIGKILL"
	})
}
