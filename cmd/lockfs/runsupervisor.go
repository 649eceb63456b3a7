package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// 'lockfs run' never outlives its lock, and COMMAND never outlives
// 'lockfs run'.
//
// The danger: 'lockfs run' killed with SIGKILL (OOM killer, timeout -s
// KILL, systemd KillMode=process) closes the lock descriptor, so the lock
// is released, while COMMAND, in its own process group, keeps running: the
// next holder's critical section overlaps COMMAND's. No process can clean up
// after its own SIGKILL, so a second process must, and it must hold the lock
// until the cleanup is done.
//
// The design: 'lockfs run' (the front, the pid users see and signal) takes
// the lock, then starts a supervisor, the same binary re-executed as
// 'lockfs __run-supervisor', which
//
//   - inherits a copy of the lock descriptor (same open file description:
//     the lock is released only when both the front and the supervisor
//     have closed it), and a pipe whose write end only the front holds;
//   - starts COMMAND in a new process group G (COMMAND is its leader, so
//     its pid is the pgid, as before), with PR_SET_PDEATHSIG(SIGKILL) so
//     that COMMAND dies with the supervisor, and without the lock
//     descriptor (close-on-exec, as before: COMMAND's background
//     children cannot keep the lock);
//   - then leaves the front's process group for one of its own, so that
//     a signal to the front's group (a shell's kill %job, which reaches
//     the front) does not kill it too;
//   - is a child subreaper, so that orphans of G become its children and
//     it can reap them;
//   - does what the front did before: forwards the signals the front
//     passes on, watches for the loss of the lock, ends COMMAND on a loss
//     and exits with COMMAND's status, which the front passes through.
//
// When the front dies, the pipe reaches end of file in the supervisor
// (the kernel closes the write end of a dead process, whatever killed it),
// which then sends SIGKILL to G, reaps until no process of G is left
// (kill(-G, 0) fails with ESRCH), and only then exits, closing the last
// copy of the lock descriptor: a waiter is granted the lock only after
// COMMAND and everything in its group are gone. When the supervisor dies
// (SIGKILL of it alone), COMMAND gets its parent-death SIGKILL and the
// front, which learnt G from the supervisor and still holds the lock,
// kills the rest of G and waits the same way before it exits. Only if both
// die together (kill -9 of both pids, or of the whole cgroup, which kills G
// too) can a grandchild of COMMAND outlive the lock.
//
// A pipe rather than PR_SET_PDEATHSIG tells the supervisor of the front's
// death: the parent-death signal follows the thread that forked, not the
// process, and Go may fork from any thread.

// supervisorCmd is the hidden command of the supervisor.
const supervisorCmd = "__run-supervisor"

// Descriptors of the supervisor, in the order of exec.Cmd.ExtraFiles.
const (
	supLockFd   = 3 // the lock descriptor (a copy of the front's)
	supLifeFd   = 4 // read end of the pipe whose write end the front holds
	supReportFd = 5 // write end: COMMAND's pid, then closed
)

// supervisor is the front's view of a started supervisor.
type supervisor struct {
	cmd      *exec.Cmd
	fgPgrp   int // the front's foreground group, -1 when none
	pidOnce  sync.Once
	pidCh    chan int
	pidValue int
	// life is the write end of the pipe the supervisor watches; never
	// written, closed by the kernel when the front exits.
	life *os.File
}

// pgid returns COMMAND's process group as the supervisor reported it, or 0
// when it reported none (COMMAND never started).
func (s *supervisor) pgid() int {
	s.pidOnce.Do(func() { s.pidValue = <-s.pidCh })
	return s.pidValue
}

// restoreTTY gives the terminal back to the front's group after the
// supervisor died without doing so.
func (s *supervisor) restoreTTY() {
	if s.fgPgrp < 0 {
		return
	}
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, s.fgPgrp)
}

// startSupervisor starts the supervisor of COMMAND (path, c.argv) with a
// copy of the lock descriptor fd. The front becomes a child subreaper, so
// that COMMAND is reparented to it if the supervisor dies.
func startSupervisor(c runConfig, path string, fd int, token string) (*supervisor, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	lockCopy, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup lock descriptor: %w", err)
	}
	lockFile := os.NewFile(uintptr(lockCopy), "lock")
	defer lockFile.Close()
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer lifeR.Close()
	// lifeW stays open (never written) for the front's lifetime: its
	// end of file is the supervisor's news of the front's death.
	repR, repW, err := os.Pipe()
	if err != nil {
		lifeW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer repW.Close()
	s := &supervisor{fgPgrp: foregroundPgrp(), pidCh: make(chan int, 1)}
	args := []string{supervisorCmd, "--kill-grace", c.killGrace.String(), "--name", c.name,
		"--fg-pgrp", strconv.Itoa(s.fgPgrp), "--path", path, "--"}
	s.cmd = exec.Command("/proc/self/exe", append(args, c.argv...)...)
	s.cmd.Args[0] = os.Args[0]
	s.cmd.Stdin, s.cmd.Stdout, s.cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	s.cmd.Env = append(os.Environ(), "LOCKFS_TOKEN="+token, "LOCKFS_NAME="+c.name)
	s.cmd.ExtraFiles = []*os.File{lockFile, lifeR, repW}
	if err := s.cmd.Start(); err != nil {
		lifeW.Close()
		repR.Close()
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	s.life = lifeW
	go func() {
		defer repR.Close()
		line, _ := bufio.NewReader(repR).ReadString('\n')
		pid, _ := strconv.Atoi(strings.TrimSpace(line))
		s.pidCh <- pid
	}()
	return s, nil
}

// supervisorConfig is the command line of the supervisor.
type supervisorConfig struct {
	killGrace time.Duration
	name      string
	fgPgrp    int
	path      string
	argv      []string
}

// runSupervisor is the supervisor: it runs COMMAND in its own process group
// while the lock is held, as described at the top of this file, and
// returns the exit code the front passes through.
func runSupervisor(args []string, stderr io.Writer) int {
	var c supervisorConfig
	fl := flag.NewFlagSet(supervisorCmd, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.DurationVar(&c.killGrace, "kill-grace", 5*time.Second, "")
	fl.StringVar(&c.name, "name", "", "")
	fl.IntVar(&c.fgPgrp, "fg-pgrp", -1, "")
	fl.StringVar(&c.path, "path", "", "")
	if err := fl.Parse(args); err != nil || fl.NArg() == 0 || c.path == "" {
		fmt.Fprintf(stderr, "lockfs: %s is internal to 'lockfs run'\n", supervisorCmd)
		return runExitUsage
	}
	c.argv = fl.Args()
	// The thread that forks COMMAND is the one its parent-death signal
	// follows: keep it for the life of the process.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(stderr, "lockfs run: PR_SET_CHILD_SUBREAPER: %v\n", err)
		return runExitOSErr
	}
	for _, fd := range []int{supLockFd, supLifeFd, supReportFd} {
		unix.CloseOnExec(fd)
	}
	report := os.NewFile(supReportFd, "report")
	life := os.NewFile(supLifeFd, "life")

	cmd := exec.Command(c.path, c.argv[1:]...)
	cmd.Args[0] = c.argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	restoreTTY := foreground(cmd, c.fgPgrp)

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	// Stopped by the terminal, the supervisor could not notice the
	// front's death.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU)

	if err := cmd.Start(); err != nil {
		restoreTTY()
		report.Close()
		fmt.Fprintf(stderr, "lockfs run: %v\n", err)
		switch {
		case errors.Is(err, os.ErrPermission), errors.Is(err, syscall.ENOEXEC):
			return runExitNoExec
		case errors.Is(err, os.ErrNotExist):
			return runExitNotFound
		}
		return runExitOSErr
	}
	pgid := cmd.Process.Pid
	fmt.Fprintf(report, "%d\n", pgid)
	report.Close()
	// Out of the front's process group (see the top of this file).
	_ = unix.Setpgid(0, 0)

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	frontGone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, life)
		close(frontGone)
	}()
	lost := make(chan error, 1)
	stopWatch := make(chan struct{})
	go watchLoss(supLockFd, lost, stopWatch)
	defer close(stopWatch)

	var lostErr error
	var kill <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			_ = unix.Kill(-pgid, sig.(syscall.Signal))
		case <-frontGone:
			// lockfs run died: end the group, then release the
			// lock by exiting.
			_ = unix.Kill(-pgid, unix.SIGKILL)
			reapGroup(pgid)
			restoreTTY()
			return 128 + int(unix.SIGKILL)
		case err := <-lost:
			lostErr = err
			fmt.Fprintf(stderr, "lockfs run: lock %s lost (%v): sending SIGTERM to COMMAND, SIGKILL in %v\n",
				c.name, err, c.killGrace)
			_ = unix.Kill(-pgid, unix.SIGTERM)
			kill = time.After(c.killGrace)
		case <-kill:
			_ = unix.Kill(-pgid, unix.SIGKILL)
		case err := <-done:
			restoreTTY()
			if lostErr != nil {
				// Stragglers of the group must not keep acting either.
				_ = unix.Kill(-pgid, unix.SIGKILL)
				return runExitLost
			}
			return commandStatus(err, stderr)
		}
	}
}

// reapGroupPoll is how often reapGroup looks for the end of a group.
const reapGroupPoll = 5 * time.Millisecond

// reapGroup waits until no process of the process group pgid is left,
// reaping the caller's dead children meanwhile (as a child subreaper the
// caller inherits the group's orphans; their zombies still count as
// members until reaped).
func reapGroup(pgid int) {
	for {
		for {
			pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
		if err := unix.Kill(-pgid, 0); errors.Is(err, unix.ESRCH) {
			return
		}
		time.Sleep(reapGroupPoll)
	}
}
