package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fsBench is the state of one 'lockfs-bench fs' run: its temp dir, the
// binaries it uses, and every process and mount it started, so that all of
// them are stopped and removed at the end, on error, and on a signal.
type fsBench struct {
	tmp    string   // removed by cleanup
	client string   // the compiled C client
	lockfs string   // the lockfs binary
	self   string   // this binary (serves the floor filesystem)
	env    []string // extra environment of the lockfs daemons

	mu      sync.Mutex
	procs   map[*exec.Cmd]*proc
	daemons []*daemon
	once    sync.Once
}

// proc is a started process; a goroutine waits for it so that cleanup and
// the benchmark code never call Wait twice. Entries stay in fsBench.procs
// after the process exits, so its exit status can still be asked for.
type proc struct {
	done chan struct{}
	err  error
}

// start starts cmd and registers it for cleanup.
func (b *fsBench) start(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &proc{done: make(chan struct{})}
	b.mu.Lock()
	b.procs[cmd] = p
	b.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return nil
}

// wait waits for a process started with start and returns its exit error.
func (b *fsBench) wait(cmd *exec.Cmd) error {
	b.mu.Lock()
	p := b.procs[cmd]
	b.mu.Unlock()
	if p == nil {
		return errors.New("process was not started")
	}
	<-p.done
	return p.err
}

// waitTimeout is wait that kills the process after d.
func (b *fsBench) waitTimeout(cmd *exec.Cmd, d time.Duration) error {
	t := time.AfterFunc(d, func() { _ = cmd.Process.Kill() })
	defer t.Stop()
	return b.wait(cmd)
}

// kill sends SIGKILL to every registered process that is not a daemon and
// waits for them.
func (b *fsBench) killClients() {
	b.mu.Lock()
	isDaemon := map[*exec.Cmd]bool{}
	for _, d := range b.daemons {
		isDaemon[d.cmd] = true
	}
	var ps []*proc
	for cmd, p := range b.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		if !isDaemon[cmd] {
			_ = cmd.Process.Kill()
			ps = append(ps, p)
		}
	}
	b.mu.Unlock()
	for _, p := range ps {
		<-p.done
	}
}

// cleanup kills the clients, stops the daemons (SIGTERM, then SIGKILL),
// detaches what is still mounted and removes the temp dir. It runs once.
func (b *fsBench) cleanup() {
	b.once.Do(func() {
		b.killClients()
		b.mu.Lock()
		ds := append([]*daemon(nil), b.daemons...)
		b.mu.Unlock()
		var wg sync.WaitGroup
		for _, d := range ds {
			wg.Add(1)
			go func() { defer wg.Done(); d.stop() }()
		}
		wg.Wait()
		mounted := false
		for _, d := range ds {
			if isMounted(d.mnt) {
				fmt.Fprintf(os.Stderr, "lockfs-bench: %s is still mounted; leaving %s\n", d.mnt, b.tmp)
				mounted = true
			}
		}
		if !mounted {
			_ = os.RemoveAll(b.tmp)
		}
	})
}

// daemon is a filesystem served by a child process: lockfs, or the floor.
type daemon struct {
	b    *fsBench
	name string
	cmd  *exec.Cmd
	mnt  string
	dir  string // holds mnt, the state dir and the log
	log  string // the daemon's stderr
}

// startLockfs starts 'lockfs mount' on a new mountpoint with a new state
// dir, and waits until it is mounted.
func (b *fsBench) startLockfs(name string, extra ...string) (*daemon, error) {
	d, err := b.newDaemon(name)
	if err != nil {
		return nil, err
	}
	state := filepath.Join(d.dir, "state")
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	args := []string{"mount", "--state-dir", state, "--log-level", "warn", "--ready-fd", "3"}
	args = append(append(args, extra...), d.mnt)
	d.cmd = exec.Command(b.lockfs, args...)
	d.cmd.Env = append(os.Environ(), b.env...)
	d.cmd.ExtraFiles = []*os.File{pw}
	err = d.run(pr, pw)
	return d, err
}

// startFloor starts this binary as the server of a floor filesystem, with
// extra flags (-floor-lock, -floor-debug) and environment (K=V).
func (b *fsBench) startFloor(name string, flags []string, env ...string) (*daemon, error) {
	d, err := b.newDaemon(name)
	if err != nil {
		return nil, err
	}
	d.cmd = exec.Command(b.self, append(append([]string{"fs"}, flags...), "-serve-floor", d.mnt)...)
	d.cmd.Env = append(os.Environ(), env...)
	pr, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	err = d.run(pr, nil)
	return d, err
}

func (b *fsBench) newDaemon(name string) (*daemon, error) {
	d := &daemon{b: b, name: name, dir: filepath.Join(b.tmp, name)}
	d.mnt = filepath.Join(d.dir, "mnt")
	d.log = filepath.Join(d.dir, "daemon.log")
	if err := os.MkdirAll(d.mnt, 0o755); err != nil {
		return nil, err
	}
	return d, nil
}

// run starts d.cmd and waits for "ready\n" on ready (whose write end pw,
// if not nil, the child has inherited and the parent closes).
func (d *daemon) run(ready io.Reader, pw *os.File) error {
	logf, err := os.Create(d.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd.Stderr = logf
	// Should the benchmark die without cleaning up, the daemon unmounts.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	d.b.mu.Lock()
	d.b.daemons = append(d.b.daemons, d)
	d.b.mu.Unlock()
	err = d.b.start(d.cmd)
	if pw != nil {
		pw.Close()
	}
	if err != nil {
		return fmt.Errorf("%s: start: %w", d.name, err)
	}
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(ready).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line == "ready\n" && isMounted(d.mnt) {
			return nil
		}
		_ = d.b.waitTimeout(d.cmd, 5*time.Second)
		return fmt.Errorf("%s: not mounted (%v); its log:\n%s", d.name, d.b.wait(d.cmd), d.tail())
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: not ready after 30s; its log:\n%s", d.name, d.tail())
	}
}

// pid is the daemon's process id.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// tail returns the end of the daemon's log.
func (d *daemon) tail() string {
	data, _ := os.ReadFile(d.log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop stops the daemon with SIGTERM (SIGKILL after 10 s) and detaches its
// mount if it is still there.
func (d *daemon) stop() {
	if d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		_ = d.b.waitTimeout(d.cmd, 10*time.Second)
	}
	if isMounted(d.mnt) {
		_ = unix.Unmount(d.mnt, unix.MNT_DETACH)
	}
}

// isMounted reports whether path is a mount point in /proc/self/mountinfo.
func isMounted(path string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// memKiB is the resident memory of a process in KiB: VmRSS (all of it),
// RssAnon (heap, stacks) and RssFile (mapped files: mostly the binary's
// code, faulted in as code paths are first used).
type memKiB struct{ rss, anon, file int64 }

func readMem(pid int) (memKiB, error) {
	var m memKiB
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	found := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		key, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &m.rss
		case "RssAnon":
			dst = &m.anon
		case "RssFile":
			dst = &m.file
		default:
			continue
		}
		f := strings.Fields(rest)
		if len(f) >= 1 {
			if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				*dst = v
				found++
			}
		}
	}
	if found < 3 {
		return m, fmt.Errorf("no VmRSS/RssAnon/RssFile for pid %d", pid)
	}
	return m, nil
}

// growth describes the growth from m0 to m1 in MiB.
func growth(m0, m1 memKiB) string {
	mib := func(k int64) float64 { return float64(k) / 1024 }
	return fmt.Sprintf("VmRSS %.1f -> %.1f MiB: +%.1f MiB (anonymous +%.1f MiB, file-backed +%.1f MiB)",
		mib(m0.rss), mib(m1.rss), mib(m1.rss-m0.rss), mib(m1.anon-m0.anon), mib(m1.file-m0.file))
}

// inOpen reports whether pid is inside an open/openat system call (i.e.
// blocked in the filesystem's OPEN).
func inOpen(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
	if err != nil {
		return false
	}
	nr, _, _ := strings.Cut(string(data), " ")
	n, err := strconv.Atoi(nr)
	return err == nil && (n == unix.SYS_OPENAT || n == unix.SYS_OPEN || n == unix.SYS_OPENAT2)
}

// locateLockfs returns the lockfs binary to measure: path if given, else a
// fresh 'go build' of the module around the working directory, else the
// lockfs next to this binary.
func locateLockfs(path, tmp, self string) (string, string, error) {
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", "", fmt.Errorf("-lockfs: %w", err)
		}
		return abs, "given", nil
	}
	if goBin, err := exec.LookPath("go"); err == nil {
		if root, ok := moduleRoot(); ok {
			bin := filepath.Join(tmp, "bin", "lockfs")
			cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/lockfs")
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err != nil {
				return "", "", fmt.Errorf("go build ./cmd/lockfs in %s: %w: %s", root, err, bytes.TrimSpace(out))
			}
			return bin, "built from " + root, nil
		}
	}
	bin := filepath.Join(filepath.Dir(self), "lockfs")
	if _, err := os.Stat(bin); err != nil {
		return "", "", errors.New("no lockfs binary: pass -lockfs PATH, run inside the lockfs module with go installed, " +
			"or put lockfs next to lockfs-bench")
	}
	return bin, "next to lockfs-bench", nil
}

// moduleRoot finds the lockfs module root at or above the working dir.
func moduleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/lockfs/lockfs\n") {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
