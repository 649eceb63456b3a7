package dirlock

// This file holds TestMain, the helper processes that the multi-process
// tests (torture_test.go, takeover_test.go, fault_test.go) start by
// re-executing the test binary, and small fixtures those tests share.
//
// A helper process is the test binary started with helperModeEnv set to a mode
// and helperArgsEnv to its JSON arguments; TestMain runs the helper instead of
// the tests. Helpers talk to the test over stdout, one line per event, and
// report failures through their exit status and stdout, never through
// testing.T. Every helper exits when its stdin reaches EOF, and is started
// with Pdeathsig, so none outlives the test process, even a stopped one.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/syncbuf"
	"github.com/lockfs/lockfs/lockengine"
)

const (
	helperModeEnv = "LOCKFS_DIRLOCK_TEST_HELPER"
	helperArgsEnv = "LOCKFS_DIRLOCK_TEST_HELPER_ARGS"
)

// TestMain runs a helper process when the binary was re-executed as one,
// and the tests otherwise, failing them when goroutines outlive them
// (heartbeat loops, sweepers and pollers must stop with Close).
func TestMain(m *testing.M) {
	if mode := os.Getenv(helperModeEnv); mode != "" {
		os.Exit(helperMain(mode, os.Getenv(helperArgsEnv)))
	}
	goleak.VerifyTestMain(m)
}

// longRun reports whether the long mode of the stress tests was asked for
// (LOCKFS_LONG=1).
func longRun() bool { return os.Getenv("LOCKFS_LONG") == "1" }

// monoNow reads CLOCK_MONOTONIC, which all processes on the machine share,
// so that timestamps taken in different processes can be subtracted.
func monoNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// helperArgs are a helper process's arguments.
type helperArgs struct {
	Dir           string        // backing directory
	Name          string        // lock name
	Shared        bool          // contend: acquire shared instead of exclusive
	Heartbeat     time.Duration // Options.Heartbeat
	TakeoverAfter time.Duration // Options.TakeoverAfter
	Path          string        // flock: the file to flock exclusively

	// torture
	Work         string // shared work directory (counters, markers)
	Goroutines   int
	Iterations   int // per goroutine
	Seed         uint64
	PerGoroutine bool          // one backend+queue per goroutine instead of per process
	Sweep        bool          // run a sweeper (IdleTTL 1ns) alongside the workers
	Deadline     time.Duration // give up (a violation) after this long
}

func helperMain(mode, raw string) int {
	var a helperArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		fmt.Fprintf(os.Stderr, "helper: bad arguments: %v\n", err)
		return 2
	}
	switch mode {
	case "torture":
		return tortureChild(a)
	case "contend":
		return contendChild(a)
	case "flock":
		return flockChild(a)
	}
	fmt.Fprintf(os.Stderr, "helper: unknown mode %q\n", mode)
	return 2
}

var sayMu sync.Mutex

// say writes one line to the test.
func say(format string, args ...any) {
	sayMu.Lock()
	defer sayMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// stdinEOF returns a channel closed when stdin reaches EOF (the test
// closed it or died).
func stdinEOF() <-chan struct{} {
	c := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(c)
	}()
	return c
}

// contendChild acquires Name and holds it until stdin closes. Lines:
// "waiting" (about to call Acquire), "granted MONO TOKEN", "lost MONO ERR"
// if the lease is lost, "error ERR" if Acquire fails.
func contendChild(a helperArgs) int {
	eof := stdinEOF()
	b, err := Open(a.Dir, Options{Heartbeat: a.Heartbeat, TakeoverAfter: a.TakeoverAfter, SweepInterval: -1})
	if err != nil {
		say("error %v", err)
		return 1
	}
	q := lockengine.NewQueue(b, lockengine.QueueOptions{})
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-eof
		cancel()
	}()
	mode := lockengine.Exclusive
	if a.Shared {
		mode = lockengine.Shared
	}
	say("waiting")
	l, err := q.Acquire(ctx, a.Name, mode)
	if err != nil {
		say("error %v", err)
		return 1
	}
	say("granted %d %d", monoNow(), l.Token())
	go func() {
		<-l.Done()
		if err := l.Err(); errors.Is(err, lockengine.ErrLost) {
			say("lost %d %v", monoNow(), err)
		}
	}()
	<-eof
	_ = l.Release()
	return 0
}

// flockChild holds an exclusive flock on Path until stdin closes. Line:
// "ready" once held.
func flockChild(a helperArgs) int {
	eof := stdinEOF()
	fd, err := unix.Open(a.Path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		say("error %v", err)
		return 1
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		say("error %v", err)
		return 1
	}
	say("ready")
	<-eof
	return 0
}

// helperProc is a running helper process.
type helperProc struct {
	mode  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string   // stdout lines; closed at EOF
	done  chan struct{} // closed once the process has exited and been reaped
	err   error         // cmd.Wait's result, written before done is closed

	stderr syncbuf.Buffer
	stop   chan struct{} // closed by cleanup: drop further lines
}

// startHelper starts a helper. Cleanup kills it (by its pid) and reaps it.
func startHelper(t *testing.T, mode string, a helperArgs) *helperProc {
	t.Helper()
	raw, err := json.Marshal(a)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperModeEnv+"="+mode, helperArgsEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &helperProc{mode: mode, cmd: cmd, lines: make(chan string), done: make(chan struct{}), stop: make(chan struct{})}
	cmd.Stderr = &p.stderr
	p.stdin, err = cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			case <-p.stop:
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		close(p.stop)
		_ = p.stdin.Close()
		_ = p.cmd.Process.Kill() // works on stopped processes too
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Errorf("helper %s pid %d was not reaped", mode, p.pid())
		}
		if t.Failed() && p.stderr.Len() > 0 {
			t.Logf("helper %s pid %d stderr:\n%s", mode, p.pid(), p.stderr.String())
		}
	})
	return p
}

func (p *helperProc) pid() int { return p.cmd.Process.Pid }

// next returns the helper's next line, failing the test after timeout or
// at EOF.
func (p *helperProc) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			<-p.done
			t.Fatalf("helper %s pid %d exited (%v) before the next line; stderr:\n%s", p.mode, p.pid(), p.err, p.stderr.String())
		}
		return line
	case <-time.After(timeout):
		t.Fatalf("helper %s pid %d: no line within %v", p.mode, p.pid(), timeout)
	}
	return ""
}

// expect reads the next line and requires it to start with word.
func (p *helperProc) expect(t *testing.T, word string, timeout time.Duration) []string {
	t.Helper()
	line := p.next(t, timeout)
	f := strings.Fields(line)
	require.Truef(t, len(f) > 0 && f[0] == word, "helper %s pid %d: want %q, got %q", p.mode, p.pid(), word, line)
	return f
}

func (p *helperProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// waitExit waits for the process to exit and returns cmd.Wait's error.
func (p *helperProc) waitExit(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("helper %s pid %d did not exit within %v", p.mode, p.pid(), timeout)
	}
	return nil
}

// waitStopped polls /proc until the process is in the stopped state.
func (p *helperProc) waitStopped(t *testing.T) {
	t.Helper()
	eventually(t, 10*time.Second, "helper stopped", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
		if err != nil {
			return false
		}
		// pid (comm) S ...: the state follows the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		return i > 0 && len(s) > i+2 && s[i+2] == 'T'
	})
}

// parseMono parses a CLOCK_MONOTONIC timestamp written by a helper.
func parseMono(t *testing.T, s string) time.Duration {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return time.Duration(n)
}

// eventually polls cond every millisecond until it holds or timeout
// passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// openQueue opens a backend and a queue on dir; cleanup closes them.
func openQueue(t *testing.T, dir string, opts Options) (*Backend, *lockengine.Queue) {
	t.Helper()
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	b, err := Open(dir, opts)
	require.NoError(t, err)
	q := lockengine.NewQueue(b, lockengine.QueueOptions{})
	t.Cleanup(func() { _ = q.Close() })
	return b, q
}

// testCtx returns a context that ends with the test or after a generous
// deadline, whichever is first.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// acquire acquires and fails the test on error.
func acquire(t *testing.T, q *lockengine.Queue, name string, mode lockengine.Mode) *lockengine.Lease {
	t.Helper()
	l, err := q.Acquire(testCtx(t, 30*time.Second), name, mode)
	require.NoError(t, err)
	return l
}

type result struct {
	l   *lockengine.Lease
	err error
	at  time.Time
}

// acquireAsync acquires in a goroutine; the result arrives on the
// returned channel (buffered, so the goroutine never leaks).
func acquireAsync(ctx context.Context, q *lockengine.Queue, name string, mode lockengine.Mode) <-chan result {
	c := make(chan result, 1)
	go func() {
		l, err := q.Acquire(ctx, name, mode)
		c <- result{l, err, time.Now()}
	}()
	return c
}

// holdOf returns b's outstanding hold of name, or nil when b holds no
// grant of it. The Queue keeps at most one hold per name per backend, so
// while a lease of name granted through b is held and not lost, this is
// the hold behind it.
func (b *Backend) holdOf(name string) *hold {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holds[name]
}

// mustHold returns the hold behind b's lease of name and fails the test
// when there is none.
func mustHold(t *testing.T, b *Backend, name string) *hold {
	t.Helper()
	h := b.holdOf(name)
	require.NotNil(t, h, "backend holds no grant of %q", name)
	return h
}

// lstat stats a path without following symlinks.
func lstat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	return st
}

// lockPath is the path of name's lock file in a backing directory.
func lockPath(dir, name string) string { return filepath.Join(dir, "locks", name) }

// median returns the median of ds.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// gosched yields a random small number of times, to widen the windows in
// which a second holder would be caught.
func gosched(r *rand.Rand) {
	for range r.IntN(3) {
		runtime.Gosched()
	}
}
