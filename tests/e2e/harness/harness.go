// Package harness runs the lockfs binary and real client processes for
// black-box tests: it builds the binaries once per test process, mounts
// daemons in temporary directories, starts clients in their own process
// groups, and makes sure that nothing it started (processes, fuse.lockfs
// mounts) outlives a test, even when the test fails.
//
// A test binary calls [Setup] from TestMain, runs its tests, then calls
// [Env.Teardown], which fails the run if a fuse.lockfs mount is left under
// the run's temporary root. Tests call [Env.Require] first, then
// [Env.StartDaemon] and [Env.Start] (or the client shortcuts); every one of
// them registers its own t.Cleanup.
//
// The package is not internal so that other test suites of the module (the
// container tests) can import it.
package harness

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
)

// RequiredEnv is the environment variable that turns missing prerequisites
// (root, /dev/fuse) from a skip into a failure. CI sets it to 1.
const RequiredEnv = "LOCKFS_E2E_REQUIRED"

// Patience is the generous deadline for anything that should happen
// "promptly" (a grant after a release, a daemon exit, an EINTR): long enough
// that a loaded 2-core machine never trips it, short enough that a hang
// fails the test instead of the whole run.
const Patience = 45 * time.Second

// Settle is how long a test lets a request that is already blocked in the
// kernel reach the daemon's queue before it relies on the daemon's arrival
// order. It is a fixed sleep, not a poll of the lock file's
// user.lockfs.waiters xattr (the count of its queued opens), because
// Proc.WaitBlockedInOpen, which uses it, knows the waiting process but not
// the lock's path.
const Settle = 150 * time.Millisecond

//go:embed pyclient.py
var pyclientSource []byte

// Env is what a test process has built and found. Its fields are read-only
// after Setup.
type Env struct {
	// Root is the run's private temporary directory; TMPDIR points to it, so
	// every t.TempDir (and so every mountpoint) is below it.
	Root string
	// SkipReason is non-empty when prerequisites are missing and
	// LOCKFS_E2E_REQUIRED is unset; tests then skip.
	SkipReason string
	// Lockfs is the built lockfs binary.
	Lockfs string
	// Client is the built Go client (tests/e2e/lockclient).
	Client string
	// Python is the python3 interpreter and PyScript the client script;
	// empty when python3 is missing.
	Python, PyScript string
	// Busybox is the busybox binary, empty when missing.
	Busybox string
	// BashPath is the bash binary.
	BashPath string
}

// Prereqs returns why this machine cannot run the tests, or "".
func Prereqs() string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "not root (mounting needs root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, fmt.Sprintf("no /dev/fuse (%v)", err))
	}
	return strings.Join(missing, "; ")
}

// Setup prepares a test process: it creates the private temporary root and
// points TMPDIR at it, checks prerequisites and, when they are met, builds
// lockfs and the Go client. A missing prerequisite is an error when
// LOCKFS_E2E_REQUIRED is set, and a SkipReason otherwise.
func Setup() (*Env, error) {
	for _, m := range sweepDead(os.TempDir()) {
		fmt.Fprintf(os.Stderr, "harness: detached a dead run's fuse.lockfs mount at %s\n", m)
	}
	root, err := os.MkdirTemp("", "lockfs-e2e-")
	if err != nil {
		return nil, fmt.Errorf("harness: temp root: %w", err)
	}
	// t.TempDir uses os.TempDir, which reads TMPDIR: mountpoints land below
	// root, which Teardown checks for leftover mounts.
	if err := os.Setenv("TMPDIR", root); err != nil {
		return nil, fmt.Errorf("harness: set TMPDIR: %w", err)
	}
	e := &Env{Root: root}
	unignoreSignals()
	if reason := Prereqs(); reason != "" {
		if os.Getenv(RequiredEnv) != "" {
			return e, fmt.Errorf("harness: %s is set but prerequisites are missing: %s", RequiredEnv, reason)
		}
		e.SkipReason = reason + " (set " + RequiredEnv + "=1 to make this a failure)"
		return e, nil
	}
	bin := filepath.Join(root, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		return e, fmt.Errorf("harness: %w", err)
	}
	e.Lockfs = filepath.Join(bin, "lockfs")
	e.Client = filepath.Join(bin, "lockclient")
	errc := make(chan error, 2)
	go func() { errc <- Build(e.Lockfs, "github.com/lockfs/lockfs/cmd/lockfs") }()
	go func() { errc <- Build(e.Client, "github.com/lockfs/lockfs/tests/e2e/lockclient") }()
	for range 2 {
		if err := <-errc; err != nil {
			return e, err
		}
	}
	if e.BashPath, err = exec.LookPath("bash"); err != nil {
		return e, fmt.Errorf("harness: bash: %w", err)
	}
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(p); err == nil {
			e.Python = path
			break
		}
	}
	if e.Python != "" {
		e.PyScript = filepath.Join(bin, "pyclient.py")
		if err := os.WriteFile(e.PyScript, pyclientSource, 0o755); err != nil {
			return e, fmt.Errorf("harness: %w", err)
		}
	}
	if path, err := exec.LookPath("busybox"); err == nil {
		e.Busybox = path
	}
	return e, nil
}

// unignoreSignals makes sure that clients start with the default action
// for SIGINT and SIGTERM. A test binary started with them ignored (from a
// script that ran it in the background, say) would pass SIG_IGN on to every
// client, and a client that ignores SIGINT cannot be interrupted by it.
// Registering a handler is the one way to stop Go from keeping a signal
// ignored; children then get the default action (exec resets handled
// signals). The test process itself still discards these signals, as it
// did before.
func unignoreSignals() {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		mask, ok := strings.CutPrefix(line, "SigIgn:")
		if !ok {
			continue
		}
		ign, err := strconv.ParseUint(strings.TrimSpace(mask), 16, 64)
		if err != nil {
			return
		}
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			if ign&(1<<(uint(sig)-1)) != 0 {
				signal.Notify(make(chan os.Signal, 1), sig)
			}
		}
	}
}

// Build compiles the main package pkg of this module into out, statically
// (CGO_ENABLED=0) so the binary also runs in minimal containers.
func Build(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("harness: go build %s: %w\n%s", pkg, err, buf.String())
	}
	return nil
}

// Teardown checks that no fuse.lockfs mount is left below Root (detaching
// any it finds, and returning an error naming them), detaches other
// leftover mounts below Root (fusectl, tmpfs), and removes Root.
func (e *Env) Teardown() error {
	if e == nil || e.Root == "" {
		return nil
	}
	var errs []error
	left, err := LockfsMountsUnder(e.Root)
	if err != nil {
		errs = append(errs, err)
	}
	for _, m := range left {
		errs = append(errs, fmt.Errorf("harness: fuse.lockfs mount left behind at %s", m))
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	others, _ := MountsUnder(e.Root)
	for _, m := range others {
		_ = unix.Unmount(m.Point, unix.MNT_DETACH)
	}
	if err := os.RemoveAll(e.Root); err != nil {
		errs = append(errs, fmt.Errorf("harness: remove temp root: %w", err))
	}
	return errors.Join(errs...)
}

// sweepDead detaches the fuse.lockfs mounts that a dead run left below
// tmp/lockfs-e2e-*: a go test timeout panics past every cleanup, the
// daemons die with the test binary (their parent-death signal), and their
// mounts then fail with ENOTCONN. A mount that still answers belongs to a
// run in progress and is left alone, as is one that does not answer in
// time. It returns the mountpoints it detached.
func sweepDead(tmp string) []string {
	ms, err := Mounts()
	if err != nil {
		return nil
	}
	prefix := filepath.Join(tmp, "lockfs-e2e-")
	var out []string
	for _, m := range mountinfo.Lockfs(ms) {
		if !strings.HasPrefix(m.Point, prefix) {
			continue
		}
		res := make(chan error, 1)
		go func() {
			var st unix.Statfs_t
			res <- unix.Statfs(m.Point, &st)
		}()
		select {
		case err := <-res:
			if errors.Is(err, unix.ENOTCONN) && unix.Unmount(m.Point, unix.MNT_DETACH) == nil {
				out = append(out, m.Point)
			}
		case <-time.After(2 * time.Second):
		}
	}
	return out
}

// Require skips t when prerequisites are missing (and LOCKFS_E2E_REQUIRED is
// unset). Every test calls it first.
func (e *Env) Require(t testing.TB) {
	t.Helper()
	if e == nil {
		t.Fatal("harness: Setup was not called (or failed)")
	}
	if e.SkipReason != "" {
		t.Skip("lockfs e2e: " + e.SkipReason)
	}
}

// Mount is one line of /proc/self/mountinfo (ID, Dev, Point, FSType,
// Source, ...; see mountinfo.Mount).
type Mount = mountinfo.Mount

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]Mount, error) {
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	return ms, nil
}

// IsLockfsMounted reports whether a fuse.lockfs mount is at path.
func IsLockfsMounted(path string) (bool, error) {
	ids, err := LockfsMountIDs(path)
	return len(ids) > 0, err
}

// LockfsMountIDs returns the IDs of the fuse.lockfs mounts at path (more
// than one when mounts are stacked).
func LockfsMountIDs(path string) ([]int, error) {
	ms, err := Mounts()
	if err != nil {
		return nil, err
	}
	var ids []int
	for _, m := range mountinfo.Lockfs(mountinfo.At(ms, path)) {
		ids = append(ids, m.ID)
	}
	return ids, nil
}

// MountsUnder lists mounts at or below dir, deepest last.
func MountsUnder(dir string) ([]Mount, error) {
	ms, err := Mounts()
	if err != nil {
		return nil, err
	}
	return mountinfo.Under(ms, dir), nil
}

// LockfsMountsUnder lists the fuse.lockfs mountpoints at or below dir.
func LockfsMountsUnder(dir string) ([]string, error) {
	ms, err := MountsUnder(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mountinfo.Lockfs(ms) {
		out = append(out, m.Point)
	}
	return out, nil
}

// AbortFUSE aborts the FUSE connection of the mount with device dev
// ("0:42") through the fusectl filesystem, mounted under root for the
// purpose (Teardown unmounts it). It is the last resort for a daemon that
// cannot die because one of its own threads waits on its own mount.
func AbortFUSE(root, dev string) error {
	_, minor, ok := strings.Cut(dev, ":")
	if !ok {
		return fmt.Errorf("harness: bad device %q", dev)
	}
	ctl := filepath.Join(root, "fusectl")
	if _, err := os.Stat(filepath.Join(ctl, minor)); err != nil {
		if err := os.MkdirAll(ctl, 0o755); err != nil {
			return fmt.Errorf("harness: %w", err)
		}
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("harness: mount fusectl: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(ctl, minor, "abort"), []byte("1"), 0o200); err != nil {
		return fmt.Errorf("harness: abort FUSE connection %s: %w", dev, err)
	}
	return nil
}

// Mono returns CLOCK_MONOTONIC in nanoseconds, the clock the clients print.
func Mono() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// Eventually polls cond every 10ms until it returns true or timeout
// passes, then fails t with the last message cond returned.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
