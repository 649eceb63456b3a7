package harness

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/launch"
	"github.com/lockfs/lockfs/internal/mountinfo"
)

// DaemonConfig describes one `lockfs mount` daemon.
type DaemonConfig struct {
	// Mountpoint defaults to a fresh t.TempDir().
	Mountpoint string
	// StateDir defaults to a fresh t.TempDir(). Daemons that must exclude
	// each other share one.
	StateDir string
	// Heartbeat and TakeoverAfter are passed as --heartbeat and
	// --takeover-after when non-zero.
	Heartbeat, TakeoverAfter time.Duration
	// LogLevel defaults to "debug" (the log is shown only on failure).
	LogLevel string
	// Args are extra arguments placed before the mountpoint.
	Args []string
	// ExtraFiles become the daemon's descriptors 3, 4, ... (for --ready-fd).
	ExtraFiles []*os.File
	// Env is added to the daemon's environment (VAR=value), for example
	// NOTIFY_SOCKET and WATCHDOG_USEC.
	Env []string
	// PidNamespace starts the daemon in a new pid namespace (CLONE_NEWPID),
	// as its pid 1, so that the test's processes are not visible from it:
	// the kernel reports them to the daemon with pid 0. Every other
	// namespace, the mount namespace included, stays the test's, so the
	// mount shows where the test looks. Daemon.Pid is still the daemon's
	// pid in the test's namespace, so stopping and killing work as usual.
	// The kernel delivers a signal from the test's namespace to the
	// daemon only if lockfs handles it (the Go runtime handles every
	// catchable one), and SIGKILL and the parent-death SIGKILL always; when
	// the daemon exits, the kernel kills whatever else runs in its
	// namespace.
	PidNamespace bool
	// Exec, when set, is a program and its arguments that exec lockfs
	// with the daemon's arguments appended (setpriv, say, to start it
	// with fewer capabilities). It must replace itself by lockfs, not
	// fork it: the harness signals and waits for the pid it started.
	Exec []string
}

// Daemon is a running `lockfs mount` subprocess.
type Daemon struct {
	t          testing.TB
	root       string // Env.Root, for AbortFUSE
	logLevel   string
	Mountpoint string
	StateDir   string
	Cmd        *exec.Cmd // started by proc; call no method that waits on it

	proc *launch.Daemon

	// stale are the fuse.lockfs mounts at Mountpoint before the start (a
	// killed daemon's), which do not count as ready; mountID is the mount
	// WaitReady found (0 before).
	stale   []int
	mountID int
	dev     string // MAJ:MIN of the mount WaitReady found
}

// StartDaemon starts `lockfs mount` as a subprocess and waits until its
// mountpoint shows in /proc/self/mountinfo with fstype fuse.lockfs. Its
// cleanup sends SIGTERM (then SIGKILL after Patience), detaches a mount
// still left, and prints the daemon's log if the test failed.
func (e *Env) StartDaemon(t testing.TB, c DaemonConfig) *Daemon {
	t.Helper()
	d := e.SpawnDaemon(t, c)
	d.WaitReady(Patience)
	return d
}

// SpawnDaemon starts the daemon like StartDaemon but does not wait for the
// mount (for tests of start-up errors).
func (e *Env) SpawnDaemon(t testing.TB, c DaemonConfig) *Daemon {
	t.Helper()
	if c.Mountpoint == "" {
		c.Mountpoint = t.TempDir()
	}
	if c.StateDir == "" {
		c.StateDir = t.TempDir()
	}
	if c.LogLevel == "" {
		c.LogLevel = "debug"
	}
	args := []string{"mount", "--state-dir", c.StateDir, "--log-level", c.LogLevel}
	if c.Heartbeat != 0 {
		args = append(args, "--heartbeat", c.Heartbeat.String())
	}
	if c.TakeoverAfter != 0 {
		args = append(args, "--takeover-after", c.TakeoverAfter.String())
	}
	args = append(args, c.Args...)
	args = append(args, c.Mountpoint)

	d := &Daemon{t: t, root: e.Root, logLevel: c.LogLevel, Mountpoint: c.Mountpoint, StateDir: c.StateDir}
	var err error
	if d.stale, err = LockfsMountIDs(c.Mountpoint); err != nil {
		t.Fatal(err)
	}
	// The launcher's parent-death SIGKILL: if the test binary dies (a go
	// test timeout), the daemon dies with it instead of serving forever.
	path := e.Lockfs
	if len(c.Exec) > 0 {
		path, args = c.Exec[0], append(append(append([]string{}, c.Exec[1:]...), e.Lockfs), args...)
	}
	d.proc, err = launch.Start(launch.Options{
		Path:            path,
		Args:            args,
		Mountpoint:      c.Mountpoint,
		ExtraFiles:      c.ExtraFiles,
		Env:             c.Env,
		NewPIDNamespace: c.PidNamespace,
	})
	if err != nil {
		t.Fatalf("harness: start lockfs: %v", err)
	}
	d.Cmd = d.proc.Cmd()
	t.Cleanup(d.cleanup)
	return d
}

// WaitReady waits until a new fuse.lockfs mount is at the mountpoint (a
// stale one from before the start does not count) and, at log levels debug
// and info, until the daemon has logged msg=mounted. It fails t (with the
// daemon's log) if the daemon exits first or timeout passes.
//
// The mount shows in mountinfo while the daemon is still inside
// fsnode.Mount; msg=mounted is logged once Mount has returned and the
// daemon serves, so a test that then signals or kills the daemon sees its
// steady-state behaviour, not its start-up.
func (d *Daemon) WaitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d.mountID == 0 {
			ms, err := Mounts()
			if err != nil {
				d.t.Fatal(err)
			}
			for _, m := range mountinfo.Lockfs(mountinfo.At(ms, d.Mountpoint)) {
				if !slices.Contains(d.stale, m.ID) {
					d.mountID, d.dev = m.ID, m.Dev
				}
			}
		}
		if d.mountID != 0 && (d.logLevel != "debug" && d.logLevel != "info" || strings.Contains(d.Log(), "msg=mounted")) {
			return
		}
		if d.Exited() {
			d.t.Fatalf("lockfs mount %s exited (%v) before the mount was ready; log:\n%s",
				d.Mountpoint, d.proc.WaitErr(), d.Log())
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("lockfs mount %s: not mounted after %v; log:\n%s", d.Mountpoint, timeout, d.Log())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *Daemon) cleanup() {
	t := d.t
	// SIGTERM (after SIGCONT, so a stopped daemon handles it), then SIGKILL
	// after Patience; nothing is sent to a daemon that already exited.
	err := d.proc.Terminate(Patience)
	switch {
	case err == nil:
	case errors.Is(err, launch.ErrNotReaped):
		t.Errorf("lockfs mount %s: %v", d.Mountpoint, err)
		d.abortStuck()
	case errors.Is(err, launch.ErrKilled):
		t.Errorf("lockfs mount %s: %v", d.Mountpoint, err)
	default:
		t.Errorf("lockfs mount %s: exit code %d after SIGTERM, want 0 (%v)",
			d.Mountpoint, d.proc.ExitCode(), d.proc.WaitErr())
	}
	// A killed daemon leaves its mount behind (ENOTCONN); so may a buggy one.
	// Only this daemon's mount is detached, not a later daemon's.
	if d.Mounted() {
		if err := launch.Detach(d.Mountpoint); err != nil {
			t.Errorf("harness: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("lockfs mount %s (pid %d) log:\n%s", d.Mountpoint, d.Pid(), d.Log())
	}
}

// killHard sends SIGKILL and, if the daemon is still not reaped after
// launch.KillWait (a thread of it waits on its own mount), fails the test
// and aborts its FUSE connection.
func (d *Daemon) killHard() {
	if err := d.proc.Kill(); err != nil {
		d.t.Errorf("lockfs mount %s: %v", d.Mountpoint, err)
		d.abortStuck()
	}
}

// abortStuck aborts the FUSE connection of a daemon that survived SIGKILL,
// and fails the test if even that does not let it be reaped within
// Patience.
func (d *Daemon) abortStuck() {
	d.t.Errorf("lockfs mount %s: aborting the FUSE connection %s of pid %d", d.Mountpoint, d.dev, d.Pid())
	if d.dev != "" {
		if err := AbortFUSE(d.root, d.dev); err != nil {
			d.t.Error(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	if _, err := d.proc.Wait(ctx); err != nil {
		d.t.Errorf("lockfs mount %s: pid %d survives SIGKILL and a FUSE abort", d.Mountpoint, d.Pid())
	}
}

// Path returns the path of name under the mountpoint.
func (d *Daemon) Path(name string) string { return filepath.Join(d.Mountpoint, name) }

// Pid returns the daemon's process id in the test's pid namespace (also
// with DaemonConfig.PidNamespace, where the daemon is pid 1 of its own).
func (d *Daemon) Pid() int { return d.proc.Pid() }

// Log returns the daemon's stderr (and stdout) so far.
func (d *Daemon) Log() string { return d.proc.Log() }

// Exited reports whether the daemon has exited and been reaped.
func (d *Daemon) Exited() bool { return d.proc.Exited() }

// WaitLog waits until the daemon's log has a line containing every one of
// substrs, and returns that line.
func (d *Daemon) WaitLog(timeout time.Duration, substrs ...string) string {
	d.t.Helper()
	var found string
	Eventually(d.t, timeout, func() (bool, string) {
		for line := range strings.SplitSeq(d.Log(), "\n") {
			all := true
			for _, s := range substrs {
				if !strings.Contains(line, s) {
					all = false
					break
				}
			}
			if all {
				found = line
				return true, ""
			}
		}
		return false, "no daemon log line containing all of " + strings.Join(substrs, ", ") + "; log:\n" + d.Log()
	})
	return found
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig unix.Signal) {
	d.t.Helper()
	if err := d.proc.Signal(sig); err != nil {
		d.t.Fatalf("harness: kill lockfs %v: %v", sig, err)
	}
}

// Wait waits up to timeout for the daemon to exit and returns its exit
// code (-1 when killed by a signal), failing t on timeout.
func (d *Daemon) Wait(timeout time.Duration) int {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	code, err := d.proc.Wait(ctx)
	if err != nil {
		d.t.Fatalf("lockfs mount %s did not exit within %v (state %s); log:\n%s",
			d.Mountpoint, timeout, ProcStateString(d.Pid()), d.Log())
	}
	return code
}

// Kill sends SIGKILL and waits for the daemon to be reaped (see killHard).
// Its mount stays (stale, ENOTCONN) until the cleanup or the test detaches
// it.
func (d *Daemon) Kill() {
	d.t.Helper()
	d.killHard()
}

// Mounted reports whether the daemon's own mount (the one WaitReady saw),
// or before readiness any new fuse.lockfs mount, is at its mountpoint.
func (d *Daemon) Mounted() bool {
	d.t.Helper()
	ids, err := LockfsMountIDs(d.Mountpoint)
	if err != nil {
		d.t.Fatal(err)
	}
	for _, id := range ids {
		if id == d.mountID || (d.mountID == 0 && !slices.Contains(d.stale, id)) {
			return true
		}
	}
	return false
}
