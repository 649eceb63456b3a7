package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/launch"
	"github.com/lockfs/lockfs/internal/mountinfo"
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
	procs   map[*exec.Cmd]*proc // the clients
	daemons []*daemon
	once    sync.Once
}

// proc is a started client process; a goroutine waits for it so that
// cleanup and the benchmark code never call Wait twice. Entries stay in
// fsBench.procs after the process exits, so its exit status can still be
// asked for.
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

// killClients sends SIGKILL to every registered client still running and
// waits for them.
func (b *fsBench) killClients() {
	b.mu.Lock()
	var ps []*proc
	for cmd, p := range b.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		_ = cmd.Process.Kill()
		ps = append(ps, p)
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
			wg.Go(d.stop)
		}
		wg.Wait()
		mounted := false
		for _, d := range ds {
			if ok, err := mountinfo.IsMounted(d.mnt); ok || err != nil {
				fmt.Fprintf(os.Stderr, "lockfs-bench: %s is still mounted (%v); leaving %s\n", d.mnt, err, b.tmp)
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
	name string
	mnt  string
	dir  string         // holds mnt and the state dir
	proc *launch.Daemon // nil until started
}

// startLockfs starts 'lockfs mount' on a new mountpoint with a new state
// dir, and waits until it is mounted.
func (b *fsBench) startLockfs(name string, extra ...string) (*daemon, error) {
	return b.startLockfsBin(b.lockfs, name, "", extra...)
}

// startLockfsBin starts 'bin mount' on a new mountpoint with state
// directory state (a new one when ""; daemons sharing one exclude each
// other), and waits until it is mounted.
func (b *fsBench) startLockfsBin(bin, name, state string, extra ...string) (*daemon, error) {
	d, err := b.newDaemon(name)
	if err != nil {
		return nil, err
	}
	if state == "" {
		state = filepath.Join(d.dir, "state")
	}
	args := []string{"mount", "--state-dir", state, "--log-level", "warn", "--ready-fd", "3"}
	args = append(append(args, extra...), d.mnt)
	return d, b.run(d, launch.Options{Path: bin, Args: args, Env: b.env, ReadyFD: 3})
}

// startFloor starts this binary as the server of a floor filesystem, with
// extra flags (-floor-lock, -floor-debug) and environment (K=V); it says
// "ready" on its stdout.
func (b *fsBench) startFloor(name string, flags []string, env ...string) (*daemon, error) {
	d, err := b.newDaemon(name)
	if err != nil {
		return nil, err
	}
	args := append(append([]string{"fs"}, flags...), "-serve-floor", d.mnt)
	return d, b.run(d, launch.Options{Path: b.self, Args: args, Env: env, ReadyFD: 1})
}

func (b *fsBench) newDaemon(name string) (*daemon, error) {
	d := &daemon{name: name, dir: filepath.Join(b.tmp, name)}
	d.mnt = filepath.Join(d.dir, "mnt")
	if err := os.MkdirAll(d.mnt, 0o755); err != nil {
		return nil, err
	}
	return d, nil
}

// run starts d with o, registers it for cleanup and waits for its ready
// line and its mount.
func (b *fsBench) run(d *daemon, o launch.Options) error {
	o.Mountpoint = d.mnt
	// Should the benchmark die without cleaning up, the daemon unmounts.
	o.DeathSignal = syscall.SIGTERM
	p, err := launch.Start(o)
	if err != nil {
		return fmt.Errorf("%s: start: %w", d.name, err)
	}
	d.proc = p
	b.mu.Lock()
	b.daemons = append(b.daemons, d)
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = p.WaitReady(ctx)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: not ready after 30s; its log:\n%s", d.name, d.tail())
	case err == nil:
		if ok, merr := mountinfo.IsMounted(d.mnt); ok {
			return nil
		} else if merr != nil {
			err = merr
		} else {
			err = errors.New("ready, but nothing is mounted")
		}
	}
	// It said it failed (or said nothing): give it time to exit, then
	// report how it ended.
	ctx5, cancel5 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel5()
	if _, werr := p.Wait(ctx5); werr != nil {
		_ = p.Kill()
	}
	return fmt.Errorf("%s: not mounted (%w; %v); its log:\n%s", d.name, err, p.WaitErr(), d.tail())
}

// pid is the daemon's process id.
func (d *daemon) pid() int { return d.proc.Pid() }

// log returns the daemon's output so far.
func (d *daemon) log() string { return d.proc.Log() }

// tail returns the end of the daemon's log.
func (d *daemon) tail() string {
	data := d.log()
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return data
}

// stop stops the daemon with SIGTERM (SIGKILL after 10 s) and detaches its
// mount if it is still there.
func (d *daemon) stop() {
	if d.proc != nil {
		_ = d.proc.Stop(10 * time.Second)
	}
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
