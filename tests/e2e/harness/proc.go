package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/launch"
	"github.com/lockfs/lockfs/internal/syncbuf"
)

// Proc is a client process started by a test, in its own process group
// (so everything it forks can be killed with it). Its stdout is collected
// line by line for WaitLine; its stderr is kept for failure messages.
type Proc struct {
	t    testing.TB
	Name string
	Cmd  *exec.Cmd

	stdin *os.File // write end; nil after CloseStdin

	mu      sync.Mutex
	lines   []string      // guarded by mu; every stdout line so far
	next    int           // guarded by mu; first line WaitLine has not consumed
	eof     bool          // guarded by mu; stdout reached EOF
	changed chan struct{} // guarded by mu; closed and replaced on every change

	stderr syncbuf.Buffer

	outDone chan struct{} // closed when stdout reached EOF
	errDone chan struct{} // closed when stderr reached EOF
	exit
}

// ProcOptions describes a process to start.
type ProcOptions struct {
	Name string   // label in messages; default the program's base name
	Path string   // program
	Args []string // arguments, without the program
	Env  []string // added to the test process's environment
	Dir  string
	// Credential, when set, runs the process as that user.
	Credential *syscall.Credential
}

// Start starts a process and registers a cleanup that kills its whole
// process group with SIGKILL and reaps it. A process that does not die
// within Patience (stuck in D state) fails the test.
func Start(t testing.TB, o ProcOptions) *Proc {
	t.Helper()
	name := o.Name
	if name == "" {
		name = o.Path[strings.LastIndexByte(o.Path, '/')+1:]
	}
	p := &Proc{t: t, Name: name, changed: make(chan struct{}), exit: newExit(),
		outDone: make(chan struct{}), errDone: make(chan struct{})}
	p.Cmd = exec.Command(o.Path, o.Args...)
	p.Cmd.Env = append(os.Environ(), o.Env...)
	p.Cmd.Dir = o.Dir
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: o.Credential}

	// Real pipes (*os.File) rather than io.Writers: exec's copying goroutines
	// would make Wait hang while a backgrounded grandchild keeps the pipe open.
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatalf("harness: pipe: %v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatalf("harness: pipe: %v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatalf("harness: pipe: %v", err)
	}
	p.Cmd.Stdin, p.Cmd.Stdout, p.Cmd.Stderr = inR, outW, errW
	err = p.Cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		t.Fatalf("harness: start %s: %v", name, err)
	}
	p.stdin = inW
	go p.readStdout(outR)
	go p.readStderr(errR)
	go func() {
		err := p.Cmd.Wait()
		// Let the readers drain what the process wrote before it exited;
		// a backgrounded grandchild may keep the pipes open, so not forever.
		drain := time.After(time.Second)
		for _, c := range []chan struct{}{p.outDone, p.errDone} {
			select {
			case <-c:
			case <-drain:
			}
		}
		p.reaped(p.Cmd, err)
		p.notify()
	}()
	t.Cleanup(p.cleanup)
	return p
}

func (p *Proc) notify() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Proc) readStdout(r *os.File) {
	defer close(p.outDone)
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	p.mu.Lock()
	p.eof = true
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Proc) readStderr(r *os.File) {
	defer close(p.errDone)
	defer r.Close()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		_, _ = p.stderr.Write(buf[:n])
		if err != nil {
			return
		}
	}
}

func (p *Proc) cleanup() {
	// The whole group: a backgrounded child (fork test) outlives its shell.
	_ = unix.Kill(-p.Cmd.Process.Pid, unix.SIGKILL)
	if p.stdin != nil {
		p.stdin.Close()
	}
	select {
	case <-p.done:
	case <-time.After(Patience):
		p.t.Errorf("harness: %s (pid %d) did not die within %v of SIGKILL: state %s",
			p.Name, p.Pid(), Patience, ProcStateString(p.Pid()))
	}
	if p.t.Failed() {
		p.t.Logf("%s (pid %d) stdout:\n%s\nstderr:\n%s", p.Name, p.Pid(), p.Stdout(), p.Stderr())
	}
}

// Pid returns the process id (also its process group id).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Stdout returns all stdout lines so far, joined.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Lines returns a copy of all stdout lines so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Stderr returns the stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// Send writes one line to the process's stdin.
func (p *Proc) Send(line string) {
	p.t.Helper()
	if p.stdin == nil {
		p.t.Fatalf("harness: %s: stdin already closed", p.Name)
	}
	if _, err := p.stdin.WriteString(line + "\n"); err != nil {
		p.t.Fatalf("harness: %s: write stdin: %v", p.Name, err)
	}
}

// CloseStdin closes the process's stdin (clients release and exit on EOF).
func (p *Proc) CloseStdin() {
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
}

// WaitLine waits up to timeout for the next unconsumed stdout line that
// starts with prefix (followed by a space or the end of the line), consumes
// it and every line before it, and returns its fields after the first. It
// fails t if the line does not come, naming what came instead.
func (p *Proc) WaitLine(prefix string, timeout time.Duration) []string {
	p.t.Helper()
	fields, err := p.waitLine(prefix, timeout)
	if err != nil {
		p.t.Fatalf("%v\nstdout so far:\n%s\nstderr:\n%s", err, p.Stdout(), p.Stderr())
	}
	return fields
}

func (p *Proc) waitLine(prefix string, timeout time.Duration) ([]string, error) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for i := p.next; i < len(p.lines); i++ {
			f := strings.Fields(p.lines[i])
			if len(f) > 0 && f[0] == prefix {
				p.next = i + 1
				p.mu.Unlock()
				return f[1:], nil
			}
		}
		eof, ch := p.eof, p.changed
		p.mu.Unlock()
		if eof {
			select {
			case <-p.done:
				return nil, fmt.Errorf("%s exited (%v) without printing %q", p.Name, p.waitErr, prefix)
			default:
			}
		}
		select {
		case <-ch:
		case <-deadline:
			return nil, fmt.Errorf("%s: no %q line within %v (process state %s)",
				p.Name, prefix, timeout, ProcStateString(p.Pid()))
		}
	}
}

// NextLine waits up to timeout for the next unconsumed stdout line,
// consumes and returns it; it fails t if none comes.
func (p *Proc) NextLine(timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		if p.next < len(p.lines) {
			l := p.lines[p.next]
			p.next++
			p.mu.Unlock()
			return l
		}
		eof, ch := p.eof, p.changed
		p.mu.Unlock()
		if eof && p.Exited() {
			p.t.Fatalf("%s exited (%v) without printing another line\nstderr:\n%s", p.Name, p.waitErr, p.Stderr())
		}
		select {
		case <-ch:
		case <-deadline:
			p.t.Fatalf("%s: no output line within %v (process state %s)\nstdout:\n%s\nstderr:\n%s",
				p.Name, timeout, ProcStateString(p.Pid()), p.Stdout(), p.Stderr())
		}
	}
}

// HasLine reports whether some stdout line (consumed or not) starts with
// the word prefix.
func (p *Proc) HasLine(prefix string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == prefix {
			return true
		}
	}
	return false
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 when killed by a signal); it fails t on timeout.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	code, ok := p.waitExit(timeout)
	if !ok {
		p.t.Fatalf("%s (pid %d) did not exit within %v: state %s\nstdout:\n%s\nstderr:\n%s",
			p.Name, p.Pid(), timeout, ProcStateString(p.Pid()), p.Stdout(), p.Stderr())
	}
	return code
}

// WaitErr returns what exec.Cmd.Wait returned; call it after Wait.
func (p *Proc) WaitErr() error { return p.waitErr }

// Signal sends sig to the process only (not its group).
func (p *Proc) Signal(sig unix.Signal) {
	p.t.Helper()
	if err := unix.Kill(p.Pid(), sig); err != nil && !errors.Is(err, unix.ESRCH) {
		p.t.Fatalf("harness: kill %s %v: %v", p.Name, sig, err)
	}
}

// SignalGroup sends sig to the process's whole group.
func (p *Proc) SignalGroup(sig unix.Signal) {
	p.t.Helper()
	if err := unix.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, unix.ESRCH) {
		p.t.Fatalf("harness: kill -%s %v: %v", p.Name, sig, err)
	}
}

// WaitBlockedInOpen waits until the process (or one of its threads) sleeps
// in open(2)/openat(2) (interruptibly, state S): the request has reached the
// kernel and the daemon has not answered it. It then waits Settle more, so
// the daemon has queued the request before the test starts the next waiter.
func (p *Proc) WaitBlockedInOpen(timeout time.Duration) {
	p.t.Helper()
	WaitBlockedInOpen(p.t, p.Pid(), timeout)
	time.Sleep(Settle)
}

// WaitBlockedInOpen waits until a thread of pid sleeps in open(2) or
// openat(2), failing t after timeout.
func WaitBlockedInOpen(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() (bool, string) {
		ok, state := BlockedInOpen(pid)
		return ok, fmt.Sprintf("pid %d not blocked in open: %s", pid, state)
	})
}

// BlockedInOpen reports whether a thread of pid is in open(2)/openat(2) in
// state S or D, and describes the threads.
func BlockedInOpen(pid int) (bool, string) {
	state, desc := OpenWaitState(pid)
	return state == 'S' || state == 'D', desc
}

// OpenWaitState returns the state letter (S, D, ...) of the thread of pid
// that is in open(2)/openat(2), or 0 when none is, and a description of
// all threads for messages.
func OpenWaitState(pid int) (byte, string) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err.Error()
	}
	var desc []string
	var found byte
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		state := procState(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
		sc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", pid, tid))
		nr, _, _ := strings.Cut(strings.TrimSpace(string(sc)), " ")
		desc = append(desc, fmt.Sprintf("tid %d state %c syscall %s", tid, state, nr))
		if found == 0 && (nr == strconv.Itoa(unix.SYS_OPENAT) || nr == strconv.Itoa(unix.SYS_OPEN)) {
			found = state
		}
	}
	return found, strings.Join(desc, ", ")
}

// ProcState returns the state letter of pid (R, S, D, Z, T, ...), or 0
// when the process does not exist.
func ProcState(pid int) byte {
	return procState(fmt.Sprintf("/proc/%d/stat", pid))
}

func procState(statPath string) byte {
	data, err := os.ReadFile(statPath)
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0
	}
	return data[i+2]
}

// ProcStateString describes pid's state and kernel wait channel for
// failure messages ("gone" when there is no such process).
func ProcStateString(pid int) string { return launch.ProcState(pid) }

// DescendantsInState lists the descendants of pid (via /proc/*/stat parent
// links) whose state is s.
func DescendantsInState(pid int, s byte) []int {
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	state := map[int]byte{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[n], state[n] = pp, f[0][0]
	}
	var out []int
	for n := range parent {
		for a := parent[n]; a > 1; a = parent[a] {
			if a == pid {
				if state[n] == s {
					out = append(out, n)
				}
				break
			}
		}
	}
	return out
}
