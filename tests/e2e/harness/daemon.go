package harness

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
}

// Daemon is a running `lockfs mount` subprocess.
type Daemon struct {
	t          testing.TB
	root       string // Env.Root, for AbortFUSE
	logLevel   string
	Mountpoint string
	StateDir   string
	Cmd        *exec.Cmd

	mu     sync.Mutex
	stderr bytes.Buffer // guarded by mu

	// stale are the fuse.lockfs mounts at Mountpoint before the start (a
	// killed daemon's), which do not count as ready; mountID is the mount
	// WaitReady found (0 before).
	stale   []int
	mountID int
	dev     string // MAJ:MIN of the mount WaitReady found

	exit
	readDone chan struct{} // closed when stderr reached EOF
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

	d := &Daemon{t: t, root: e.Root, logLevel: c.LogLevel, Mountpoint: c.Mountpoint, StateDir: c.StateDir,
		exit: newExit(), readDone: make(chan struct{})}
	var err error
	if d.stale, err = LockfsMountIDs(c.Mountpoint); err != nil {
		t.Fatal(err)
	}
	d.Cmd = exec.Command(e.Lockfs, args...)
	// Pdeathsig: if the test binary dies (a go test timeout), the daemon
	// dies with it instead of serving forever.
	d.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if c.PidNamespace {
		// With Pdeathsig the child checks getppid() against its parent's
		// pid, and getppid() is 0 in a new namespace: the child then sends
		// itself SIGKILL, which the kernel discards for a namespace's init
		// (it ignores signals from inside its namespace it has no handler
		// for). The parent-death signal itself comes from outside the
		// namespace and is delivered.
		d.Cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	defer null.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatalf("harness: pipe: %v", err)
	}
	d.Cmd.Stdin, d.Cmd.Stdout, d.Cmd.Stderr = null, errW, errW
	d.Cmd.ExtraFiles = c.ExtraFiles
	err = d.Cmd.Start()
	errW.Close()
	if err != nil {
		errR.Close()
		t.Fatalf("harness: start lockfs: %v", err)
	}
	go func() {
		defer close(d.readDone)
		defer errR.Close()
		buf := make([]byte, 8192)
		for {
			n, err := errR.Read(buf)
			d.mu.Lock()
			d.stderr.Write(buf[:n])
			d.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := d.Cmd.Wait()
		select { // the log is complete once the pipe is drained
		case <-d.readDone:
		case <-time.After(time.Second):
		}
		d.reaped(d.Cmd, err)
	}()
	t.Cleanup(d.cleanup)
	return d
}

// WaitReady waits until a new fuse.lockfs mount is at the mountpoint (a
// stale one from before the start does not count) and, at log levels debug
// and info, until the daemon has logged msg=mounted. It fails t (with the
// daemon's log) if the daemon exits first or timeout passes.
//
// The mount shows in mountinfo before go-fuse has finished mounting: its
// WaitMount then opens a file on the new mount (.go-fuse-epoll-hack), served
// by the daemon itself. A daemon SIGKILLed in that window keeps a thread in
// D state forever, so tests wait for the log line too.
func (d *Daemon) WaitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d.mountID == 0 {
			ms, err := Mounts()
			if err != nil {
				d.t.Fatal(err)
			}
			for _, m := range ms {
				if m.Point == d.Mountpoint && m.FSType == "fuse.lockfs" && !slices.Contains(d.stale, m.ID) {
					d.mountID, d.dev = m.ID, m.Dev
				}
			}
		}
		if d.mountID != 0 && (d.logLevel != "debug" && d.logLevel != "info" || strings.Contains(d.Log(), "msg=mounted")) {
			return
		}
		if d.Exited() {
			d.t.Fatalf("lockfs mount %s exited (%v) before the mount was ready; log:\n%s",
				d.Mountpoint, d.waitErr, d.Log())
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("lockfs mount %s: not mounted after %v; log:\n%s", d.Mountpoint, timeout, d.Log())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *Daemon) cleanup() {
	t := d.t
	if !d.Exited() {
		// Continue a stopped daemon first, so SIGTERM is handled.
		_ = unix.Kill(d.Pid(), unix.SIGCONT)
		_ = unix.Kill(d.Pid(), unix.SIGTERM)
		select {
		case <-d.done:
			if d.exitCode != 0 {
				t.Errorf("lockfs mount %s: exit code %d after SIGTERM, want 0 (%v)", d.Mountpoint, d.exitCode, d.waitErr)
			}
		case <-time.After(Patience):
			t.Errorf("lockfs mount %s: still running %v after SIGTERM (state %s); sending SIGKILL",
				d.Mountpoint, Patience, ProcStateString(d.Pid()))
			d.killHard()
		}
	}
	// A killed daemon leaves its mount behind (ENOTCONN); so may a buggy one.
	// Only this daemon's mount is detached, not a later daemon's.
	if d.Mounted() {
		if err := unix.Unmount(d.Mountpoint, unix.MNT_DETACH); err != nil {
			t.Errorf("harness: unmount %s: %v", d.Mountpoint, err)
		}
	}
	if t.Failed() {
		t.Logf("lockfs mount %s (pid %d) log:\n%s", d.Mountpoint, d.Pid(), d.Log())
	}
}

// killHard sends SIGKILL and, if the daemon is still not reaped after a
// while (a thread of it waits on its own mount), aborts its FUSE
// connection, failing the test in that case.
func (d *Daemon) killHard() {
	_ = unix.Kill(d.Pid(), unix.SIGKILL)
	select {
	case <-d.done:
		return
	case <-time.After(5 * time.Second):
	}
	d.t.Errorf("lockfs mount %s: pid %d not reaped 5s after SIGKILL (state %s); aborting its FUSE connection %s",
		d.Mountpoint, d.Pid(), ProcStateString(d.Pid()), d.dev)
	if d.dev != "" {
		if err := AbortFUSE(d.root, d.dev); err != nil {
			d.t.Error(err)
		}
	}
	select {
	case <-d.done:
	case <-time.After(Patience):
		d.t.Errorf("lockfs mount %s: pid %d survives SIGKILL and a FUSE abort", d.Mountpoint, d.Pid())
	}
}

// Path returns the path of name under the mountpoint.
func (d *Daemon) Path(name string) string { return filepath.Join(d.Mountpoint, name) }

// Pid returns the daemon's process id in the test's pid namespace (also
// with DaemonConfig.PidNamespace, where the daemon is pid 1 of its own).
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Log returns the daemon's stderr so far.
func (d *Daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

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
	if err := unix.Kill(d.Pid(), sig); err != nil && !errors.Is(err, unix.ESRCH) {
		d.t.Fatalf("harness: kill lockfs %v: %v", sig, err)
	}
}

// Wait waits up to timeout for the daemon to exit and returns its exit
// code (-1 when killed by a signal), failing t on timeout.
func (d *Daemon) Wait(timeout time.Duration) int {
	d.t.Helper()
	code, ok := d.waitExit(timeout)
	if !ok {
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
