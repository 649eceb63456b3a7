// Package launch runs FUSE daemons as child processes: `lockfs mount`, or
// any server that mounts a filesystem and says when it is ready. It starts
// one with its output collected, waits for its ready line, and stops it
// (SIGTERM, then SIGKILL) and detaches a mount it left behind.
//
// It is shared by lockfs-bench and the end-to-end tests; it does not
// interpret the daemon's arguments. Detaching a mount needs root
// (umount2(MNT_DETACH)).
package launch

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/internal/syncbuf"
)

// KillWait is how long Terminate and Kill wait for the daemon to be reaped
// after SIGKILL. A daemon still alive then has a thread stuck in the
// kernel, typically one waiting on its own FUSE mount.
const KillWait = 5 * time.Second

// drainWait bounds how long the reaper waits, after the daemon exited,
// for its output pipe to reach EOF (a grandchild may hold it open).
const drainWait = time.Second

// ReadyLine is what a daemon writes to its ready descriptor once its
// mount serves (lockfs mount --ready-fd N, lockfs-bench's floor server).
const ReadyLine = "ready\n"

var (
	// ErrKilled: the daemon did not exit within the grace period after
	// SIGTERM and was sent SIGKILL.
	ErrKilled = errors.New("still running after SIGTERM; sent SIGKILL")
	// ErrNotReaped: the daemon was not reaped within KillWait of SIGKILL.
	ErrNotReaped = errors.New("not reaped after SIGKILL")
	// ErrNotReady: the daemon closed its ready descriptor, or exited,
	// without writing ReadyLine.
	ErrNotReady = errors.New("no ready line")
)

// Options describes a daemon to start.
type Options struct {
	// Path is the program; Args its arguments (without the program).
	Path string
	Args []string
	// Env is added to this process's environment.
	Env []string
	// Mountpoint is the mount the daemon serves: UnmountLeftover and Stop
	// detach what is left there. Empty: nothing is detached.
	Mountpoint string
	// ExtraFiles become the daemon's descriptors 3, 4, ...; the caller
	// keeps them and closes them after Start.
	ExtraFiles []*os.File
	// ReadyFD is where the daemon writes ReadyLine: 0 for nowhere (the
	// caller checks readiness itself and WaitReady fails), 1 for its
	// stdout, or the descriptor 3+len(ExtraFiles), the one after the
	// extra files (pass the same number to the daemon, as --ready-fd).
	ReadyFD int
	// LogTo, if not nil, receives a copy of the daemon's stderr (and
	// stdout unless ReadyFD is 1) as it is collected.
	LogTo io.Writer
	// DeathSignal is sent to the daemon if the thread that started it
	// dies (prctl PR_SET_PDEATHSIG); zero means SIGKILL. SIGTERM lets a
	// lockfs daemon unmount itself when its parent dies.
	DeathSignal syscall.Signal
	// NewPIDNamespace starts the daemon as pid 1 of a new pid namespace
	// (CLONE_NEWPID); Pid is still its pid in the caller's namespace.
	NewPIDNamespace bool
}

// Daemon is a started daemon. Its methods may be called from any
// goroutine.
type Daemon struct {
	opts  Options
	cmd   *exec.Cmd
	log   syncbuf.Buffer
	ready atomic.Pointer[os.File] // read end of the ready pipe; nil without ReadyFD or once read

	logDone  chan struct{} // closed when the output pipe reached EOF
	done     chan struct{} // closed once the daemon has been reaped
	waitErr  error         // set before done is closed
	exitCode int           // set before done is closed; -1 when killed by a signal
}

// Start starts the daemon in its own process group, with stdin from
// /dev/null and its stderr (and stdout unless ReadyFD is 1) collected for
// Log. It does not wait for the mount; see WaitReady. The caller must
// eventually call Stop, Terminate or Kill (or see Done closed).
func Start(o Options) (*Daemon, error) {
	d := &Daemon{opts: o, logDone: make(chan struct{}), done: make(chan struct{})}
	cmd := exec.Command(o.Path, o.Args...)
	cmd.Env = append(os.Environ(), o.Env...)
	sig := o.DeathSignal
	if sig == 0 {
		sig = syscall.SIGKILL
	}
	// Its own process group: a terminal's SIGINT reaches the parent only,
	// which then stops the daemon in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: sig}
	if o.NewPIDNamespace {
		// With Pdeathsig the child compares getppid() with its parent's
		// pid; in a new namespace getppid() is 0 and the child sends
		// itself the signal, which the kernel discards for a namespace's
		// init without a handler. The parent-death signal itself comes
		// from outside the namespace and is delivered.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	// Real pipes rather than io.Writers: exec's copying goroutines would
	// make Wait hang while a grandchild keeps the pipe open.
	logR, logW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", o.Path, err)
	}
	defer logW.Close()
	cmd.Stdout, cmd.Stderr = logW, logW
	cmd.ExtraFiles = o.ExtraFiles
	var readyR, readyW *os.File
	switch {
	case o.ReadyFD == 0:
	case o.ReadyFD == 1 || o.ReadyFD == 3+len(o.ExtraFiles):
		if readyR, readyW, err = os.Pipe(); err != nil {
			logR.Close()
			return nil, fmt.Errorf("launch %s: %w", o.Path, err)
		}
		defer readyW.Close()
		if o.ReadyFD == 1 {
			cmd.Stdout = readyW
		} else {
			cmd.ExtraFiles = append(append([]*os.File(nil), o.ExtraFiles...), readyW)
		}
	default:
		logR.Close()
		return nil, fmt.Errorf("launch %s: ReadyFD %d: want 0, 1 or %d", o.Path, o.ReadyFD, 3+len(o.ExtraFiles))
	}
	if err := cmd.Start(); err != nil {
		logR.Close()
		if readyR != nil {
			readyR.Close()
		}
		return nil, fmt.Errorf("launch %s: %w", o.Path, err)
	}
	d.cmd = cmd
	d.ready.Store(readyR)
	go d.collect(logR)
	go d.reap()
	return d, nil
}

func (d *Daemon) collect(r *os.File) {
	defer close(d.logDone)
	defer r.Close()
	buf := make([]byte, 8192)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = d.log.Write(buf[:n])
			if d.opts.LogTo != nil {
				_, _ = d.opts.LogTo.Write(buf[:n])
			}
		}
		if err != nil {
			return
		}
	}
}

func (d *Daemon) reap() {
	err := d.cmd.Wait()
	select { // the log is complete once the pipe is drained
	case <-d.logDone:
	case <-time.After(drainWait):
	}
	d.waitErr = err
	d.exitCode = d.cmd.ProcessState.ExitCode()
	close(d.done)
}

// Cmd returns the started command; the caller must not Wait for it.
func (d *Daemon) Cmd() *exec.Cmd { return d.cmd }

// Pid returns the daemon's pid in the caller's pid namespace.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Mountpoint returns Options.Mountpoint.
func (d *Daemon) Mountpoint() string { return d.opts.Mountpoint }

// Log returns the daemon's output collected so far.
func (d *Daemon) Log() string { return d.log.String() }

// Done is closed once the daemon has exited and been reaped.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Exited reports whether the daemon has exited and been reaped.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the daemon's exit code, -1 when a signal killed it;
// valid once Done is closed.
func (d *Daemon) ExitCode() int { <-d.done; return d.exitCode }

// WaitErr returns what exec.Cmd.Wait returned for the daemon; it blocks
// until Done is closed.
func (d *Daemon) WaitErr() error { <-d.done; return d.waitErr }

// Wait waits until the daemon has been reaped and returns its exit code
// (-1 when killed by a signal), or ctx's error if ctx ends first.
func (d *Daemon) Wait(ctx context.Context) (int, error) {
	select {
	case <-d.done:
		return d.exitCode, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// WaitReady waits until the daemon writes ReadyLine on its ready
// descriptor; what it writes there afterwards goes to Log. It returns an error wrapping ErrNotReady if the descriptor
// is closed (the daemon exited, say) without it or if Options.ReadyFD was
// 0, and ctx's error if ctx ends first. It reads the line once: later
// calls return ErrNotReady.
func (d *Daemon) WaitReady(ctx context.Context) error {
	r := d.ready.Swap(nil)
	if r == nil {
		return fmt.Errorf("launch: %s: %w: no ready descriptor (or already read)", d.opts.Path, ErrNotReady)
	}
	got := make(chan string, 1)
	go func() {
		defer r.Close()
		br := bufio.NewReader(r)
		line, _ := br.ReadString('\n')
		got <- line
		// Keep reading, into the log, until the daemon closes the
		// descriptor: a daemon whose ready descriptor is its stdout
		// must not die of SIGPIPE for printing more.
		_, _ = io.Copy(&d.log, br)
	}()
	select {
	case line := <-got:
		if line == ReadyLine {
			return nil
		}
		status := "still running"
		select {
		case <-d.done:
			status = d.cmd.ProcessState.String()
		case <-time.After(drainWait): // it usually exits right after
		}
		return fmt.Errorf("launch: %s (pid %d, %s): %w (read %q)", d.opts.Path, d.Pid(), status, ErrNotReady, line)
	case <-ctx.Done():
		// The reader goroutine ends when the daemon exits or is stopped.
		return fmt.Errorf("launch: %s (pid %d): waiting for the ready line: %w", d.opts.Path, d.Pid(), ctx.Err())
	}
}

// Signal sends sig to the daemon (not to its process group). A daemon
// that is already gone is not an error; once it has been reaped, nothing is
// sent (its pid may belong to another process by then).
func (d *Daemon) Signal(sig syscall.Signal) error {
	if d.Exited() {
		return nil
	}
	if err := unix.Kill(d.Pid(), sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("launch: kill -%d %d: %w", sig, d.Pid(), err)
	}
	return nil
}

// Kill sends SIGKILL and waits up to KillWait for the daemon to be reaped;
// it returns an error wrapping ErrNotReaped if it is not.
func (d *Daemon) Kill() error {
	if err := d.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(KillWait):
		return fmt.Errorf("launch: pid %d (state %s): %w within %v", d.Pid(), ProcState(d.Pid()), ErrNotReaped, KillWait)
	}
}

// Terminate stops the daemon: SIGCONT (a stopped daemon cannot handle
// SIGTERM) and SIGTERM, then, if it has not exited within grace, SIGKILL
// (see Kill). It returns nil when the daemon exited with status 0 after
// SIGTERM or had already exited before; an error wrapping ErrKilled
// (giving its state when SIGTERM was not enough), joined with ErrNotReaped
// if even SIGKILL did not end it; or an error with the exit status when
// it exited non-zero.
func (d *Daemon) Terminate(grace time.Duration) error {
	if d.Exited() {
		return nil
	}
	_ = d.Signal(syscall.SIGCONT)
	if err := d.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-d.done:
		if d.exitCode != 0 {
			return fmt.Errorf("launch: %s (pid %d): exit code %d after SIGTERM: %w", d.opts.Path, d.Pid(), d.exitCode, d.waitErr)
		}
		return nil
	case <-time.After(grace):
	}
	err := fmt.Errorf("launch: %s (pid %d, state %s after %v): %w", d.opts.Path, d.Pid(), ProcState(d.Pid()), grace, ErrKilled)
	if kerr := d.Kill(); kerr != nil {
		return errors.Join(err, kerr)
	}
	return err
}

// UnmountLeftover lazily detaches (umount -l) the topmost mount at
// Options.Mountpoint if something is mounted there: a killed daemon
// leaves its mount behind (stat then fails with ENOTCONN). It does
// nothing without a Mountpoint.
func (d *Daemon) UnmountLeftover() error {
	if d.opts.Mountpoint == "" {
		return nil
	}
	mounted, err := mountinfo.IsMounted(d.opts.Mountpoint)
	if err != nil || !mounted {
		return err
	}
	return Detach(d.opts.Mountpoint)
}

// Stop runs Terminate(grace) and then UnmountLeftover, and returns their
// errors joined.
func (d *Daemon) Stop(grace time.Duration) error {
	return errors.Join(d.Terminate(grace), d.UnmountLeftover())
}

// Detach lazily unmounts the topmost mount at path (umount2 MNT_DETACH):
// it leaves the namespace at once and goes away when its last open file
// is closed.
func Detach(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("launch: umount -l %s: %w", path, err)
	}
	return nil
}

// ProcState describes pid's scheduler state letter (R, S, D, Z, T, ...)
// and kernel wait channel for messages, or "gone" when there is no such
// process.
func ProcState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return "gone"
	}
	wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
	return fmt.Sprintf("%c (wchan %s)", data[i+2], wchan)
}
