package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
)

// Exit codes of 'lockfs run' besides COMMAND's own status (sysexits(3)
// style, like flock(1)).
const (
	runExitUsage    = 64  // EX_USAGE: bad command line
	runExitNoLock   = 66  // EX_NOINPUT: the lock file cannot be opened (no lockfs mount, EIO, ...)
	runExitOSErr    = 71  // EX_OSERR: starting COMMAND failed for another reason
	runExitLost     = 75  // EX_TEMPFAIL: the lock was lost while COMMAND ran; COMMAND was stopped
	runExitNoExec   = 126 // COMMAND exists but cannot be executed
	runExitNotFound = 127 // COMMAND not found
)

// lossPollInterval is how often 'lockfs run' reads its lock descriptor to
// learn that the lock was lost (the read fails with EIO). go-fuse v2.12.1
// does not pass poll(2) to the filesystem, so reading is the only way.
const lossPollInterval = 100 * time.Millisecond

const runUsage = `Usage: lockfs run [-s] [-n | -w DURATION] [-E CODE] [--kill-grace DUR] [--mount M] NAME [--] COMMAND [ARG...]

Takes the lock NAME through the lockfs mount (exclusive; shared with -s),
runs COMMAND (directly, no shell) in its own process group while holding it,
and releases the lock when COMMAND exits. NAME is a lock name under the mount
(--mount, else $LOCKFS_MOUNT, else /mnt/locks) or an absolute path into a
lockfs mount. COMMAND gets LOCKFS_TOKEN (the fencing token) and LOCKFS_NAME
in its environment; the lock descriptor is not passed on (close-on-exec).
SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to COMMAND's process group.
If lockfs run itself dies (even by SIGKILL), COMMAND's process group is
killed with SIGKILL and the lock is released only once it is gone.
If the lock is lost while COMMAND runs (broken by an administrator, heartbeat
failure, takeover), COMMAND's process group gets SIGTERM, then SIGKILL after
--kill-grace, and lockfs run exits 75.

Flags:
  -s               shared lock (default exclusive)
  -n               fail at once if the lock is not free (like -w 0)
  -w DURATION      wait at most DURATION (seconds like 2 or 0.5, or 500ms, 1m)
  -E CODE          exit code when -n or -w cannot get the lock (default 1)
  --kill-grace DUR time between SIGTERM and SIGKILL after a loss (default 5s)
  --mount M        the lockfs mountpoint for a relative NAME

Exit status:
  COMMAND's exit status, or 128+N if it died of signal N
  CODE (default 1)  -n/-w: the lock was not free in time
  64   usage error
  66   the lock file cannot be opened (not a lockfs mount, I/O error, ...)
  71   COMMAND could not be started (other than 126/127)
  75   the lock was lost while COMMAND ran; COMMAND was terminated
  126  COMMAND is not executable
  127  COMMAND not found
A signal that ends lockfs run while it still waits for the lock ends it with
that signal (the wait is abandoned, nothing stays queued).
`

// runConfig is the parsed command line of 'lockfs run'.
type runConfig struct {
	shared    bool
	try       bool
	wait      time.Duration // -w; < 0: not given
	conflict  int
	killGrace time.Duration
	mount     string
	dir, name string // mount directory and lock name
	argv      []string
}

func parseRunArgs(args []string) (runConfig, error) {
	var c runConfig
	fl := flag.NewFlagSet("run", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	var wait string
	fl.BoolVar(&c.shared, "s", false, "")
	fl.BoolVar(&c.shared, "shared", false, "")
	fl.BoolVar(&c.try, "n", false, "")
	fl.BoolVar(&c.try, "nonblock", false, "")
	fl.StringVar(&wait, "w", "", "")
	fl.StringVar(&wait, "timeout", "", "")
	fl.IntVar(&c.conflict, "E", 1, "")
	fl.IntVar(&c.conflict, "conflict-exit-code", 1, "")
	fl.DurationVar(&c.killGrace, "kill-grace", 5*time.Second, "")
	fl.StringVar(&c.mount, "mount", "", "")
	if err := fl.Parse(args); err != nil {
		return c, err
	}
	c.wait = -1
	if wait != "" {
		d, err := fsnode.ParseTimeout(wait)
		if err != nil {
			return c, usageErrorf("run: -w %q: want seconds (2, 0.5) or a duration (500ms)", wait)
		}
		c.wait = d
	}
	if c.try && c.wait >= 0 {
		return c, usageErrorf("run: -n and -w exclude each other")
	}
	if c.conflict < 0 || c.conflict > 255 {
		return c, usageErrorf("run: -E %d: want 0..255", c.conflict)
	}
	if c.killGrace < 0 {
		return c, usageErrorf("run: --kill-grace must not be negative")
	}
	rest := fl.Args()
	if len(rest) == 0 {
		return c, usageErrorf("run: missing NAME")
	}
	name := rest[0]
	rest = rest[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return c, usageErrorf("run: missing COMMAND")
	}
	c.argv = rest
	var err error
	if c.dir, c.name, err = lockTarget(c.mount, name); err != nil {
		return c, err
	}
	return c, nil
}

// lockPath is the file to open: M/NAME (M/.shared/NAME with -s),
// M/.try/NAME or M/.timeout/D/NAME. A read-only open of the last two takes
// the shared lock; of M/NAME it would take nothing.
func (c *runConfig) lockPath() string {
	switch {
	case c.try || c.wait == 0:
		return filepath.Join(c.dir, fsnode.TryDir, c.name)
	case c.wait > 0:
		return filepath.Join(c.dir, fsnode.TimeoutDir, c.wait.String(), c.name)
	case c.shared:
		return filepath.Join(c.dir, fsnode.SharedDir, c.name)
	}
	return filepath.Join(c.dir, c.name)
}

// runRun implements 'lockfs run' and returns its exit code.
func runRun(args []string, stdout, stderr io.Writer) int {
	c, err := parseRunArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, runUsage)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "lockfs: %v\n\n%s", err, runUsage)
		return runExitUsage
	}
	if err := checkLockfsDir(c.dir); err != nil {
		fmt.Fprintf(stderr, "lockfs run: %v\n", err)
		return runExitNoLock
	}
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if c.shared {
		flags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	path := c.lockPath()
	// Blocks until granted. A fatal signal meanwhile kills this process
	// (no handlers are installed yet), which abandons the wait cleanly.
	fd, err := unix.Open(path, flags, 0)
	for errors.Is(err, unix.EINTR) {
		fd, err = unix.Open(path, flags, 0)
	}
	if errors.Is(err, unix.EAGAIN) {
		fmt.Fprintf(stderr, "lockfs run: %s: lock not free\n", c.name)
		return c.conflict
	}
	if err != nil {
		fmt.Fprintf(stderr, "lockfs run: open %s: %v\n", path, err)
		return runExitNoLock
	}
	defer unix.Close(fd)
	token, err := readToken(fd)
	if err != nil {
		fmt.Fprintf(stderr, "lockfs run: %s: lock lost before COMMAND started: %v\n", c.name, err)
		return runExitLost
	}
	return runHolding(c, fd, token, stderr)
}

// readToken reads the fencing token, the first line of the lock file.
func readToken(fd int) (string, error) {
	buf := make([]byte, 512)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return "", fmt.Errorf("read lock file: %w", err)
	}
	line, _, _ := bytes.Cut(buf[:n], []byte("\n"))
	tok := string(line)
	if _, err := strconv.ParseUint(tok, 10, 64); err != nil {
		return "", fmt.Errorf("read lock file: no token in %q", buf[:n])
	}
	return tok, nil
}

// runHolding runs the command while fd holds the lock, through a
// supervisor process (see runsupervisor.go), and returns lockfs run's exit
// code: the supervisor's, which is COMMAND's status or one of the run
// codes.
func runHolding(c runConfig, fd int, token string, stderr io.Writer) int {
	path, err := exec.LookPath(c.argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "lockfs run: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return runExitNotFound
		}
		return runExitNoExec
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	sup, err := startSupervisor(c, path, fd, token)
	if err != nil {
		fmt.Fprintf(stderr, "lockfs run: %v\n", err)
		return runExitOSErr
	}
	defer runtime.KeepAlive(sup.life)
	done := make(chan error, 1)
	go func() { done <- sup.cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			// The supervisor forwards it to COMMAND's group.
			_ = sup.cmd.Process.Signal(sig)
		case err := <-done:
			var ee *exec.ExitError
			if err == nil || (errors.As(err, &ee) && !ee.Sys().(syscall.WaitStatus).Signaled()) {
				return sup.cmd.ProcessState.ExitCode()
			}
			// The supervisor was killed: it can no longer guard
			// COMMAND's group, so this process does, before it
			// closes its copy of the lock descriptor (on return).
			sup.restoreTTY()
			pgid := sup.pgid()
			if pgid > 0 {
				_ = unix.Kill(-pgid, unix.SIGKILL)
				reapGroup(pgid)
			}
			fmt.Fprintf(stderr, "lockfs run: the supervisor of COMMAND died (%v); COMMAND's process group was killed\n", err)
			return runExitOSErr
		}
	}
}

// watchLoss reads fd every lossPollInterval and reports the first error
// (EIO once the lock is lost) on lost.
func watchLoss(fd int, lost chan<- error, stop <-chan struct{}) {
	t := time.NewTicker(lossPollInterval)
	defer t.Stop()
	buf := make([]byte, 1)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if _, err := unix.Pread(fd, buf, 0); err != nil && !errors.Is(err, unix.EINTR) {
			lost <- err
			return
		}
	}
}

// commandStatus maps COMMAND's end to the exit code: its status, or
// 128+N for signal N.
func commandStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	fmt.Fprintf(stderr, "lockfs run: %v\n", err)
	return runExitOSErr
}

// foregroundPgrp returns lockfs run's process group when stdin is the
// controlling terminal and that group is its foreground group (lockfs run
// runs in the foreground), else -1.
func foregroundPgrp() int {
	fg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	if err != nil || fg != unix.Getpgrp() {
		return -1
	}
	return fg
}

// foreground makes cmd's process group the terminal's foreground group when
// pgrp (lockfs run's group, see foregroundPgrp) is not -1, so an interactive
// COMMAND can read the terminal and gets ^C directly. The returned function
// gives the terminal back to pgrp.
func foreground(cmd *exec.Cmd, pgrp int) (restore func()) {
	if pgrp < 0 {
		return func() {}
	}
	cmd.SysProcAttr.Foreground = true
	cmd.SysProcAttr.Ctty = 0
	return func() {
		signal.Ignore(syscall.SIGTTOU)
		defer signal.Reset(syscall.SIGTTOU)
		_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, pgrp)
	}
}
