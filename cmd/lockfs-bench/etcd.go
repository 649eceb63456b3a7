package main

// lockfs-bench etcd: what the etcd backend costs, side by side with etcd's
// own lock in one run against one local single-node etcd.
//
//	lockfs-bench etcd [-n N] [-rounds R] [-handoffs N] [-lockfs PATH] [-etcdserver PATH] [-fsync=false]
//
// It starts tests/internal/etcdserver (a single-node etcd on etcd's embed
// package) on loopback with its data in a temp dir, and a lockfs daemon
// with --engine etcd on a temp mountpoint, then measures, interleaved in
// rounds so that machine noise hits every case alike:
//
//   - an uncontended acquire+release through the mount: open(2)+close(2)
//     of one name, which is what `exec 9>M/x; exec 9>&-` costs a script;
//     also through a second daemon with the dir backend (the cost of FUSE
//     and the daemon without etcd), and the etcdlock Backend called in
//     process (what the engine asks of etcd);
//   - etcd's client library lock (what `etcdctl lock` uses):
//     concurrency.NewSession once, then Mutex.Lock+Unlock in a loop;
//   - one Get (a linearizable read) and one Put (a Raft write): the round
//     trips to express the difference in;
//   - the handoff between two holders taking turns on one name: two lockfs
//     daemons on the same etcd (two "hosts" on one machine), and two
//     library sessions on two clients.
//
// Everything it starts is stopped and removed at the end, on error and on
// SIGINT/SIGTERM.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/launch"
	"github.com/lockfs/lockfs/internal/syncbuf"
	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// etcdBench is one 'lockfs-bench etcd' run: what it started, for cleanup.
type etcdBench struct {
	tmp string

	mu      sync.Mutex
	procs   []*exec.Cmd      // guarded by mu; etcdserver, stopped after the daemons
	daemons []*launch.Daemon // guarded by mu; the lockfs daemons, stopped in reverse order
	once    sync.Once

	daemonLog syncbuf.Buffer // the lockfs daemons' stderr, interleaved
}

func runEtcd(args []string) error {
	fl := flag.NewFlagSet("etcd", flag.ExitOnError)
	n := fl.Int("n", 3000, "acquire+release operations per case")
	rounds := fl.Int("rounds", 5, "interleaved rounds (each case runs n/rounds operations per round)")
	lockfsPath := fl.String("lockfs", "", "lockfs binary (default: go build ./cmd/lockfs of the module around the working dir)")
	serverPath := fl.String("etcdserver", "", "etcdserver binary (default: go build ./tests/internal/etcdserver of the module)")
	fsync := fl.Bool("fsync", true, "let etcd fsync its log (false: faster, no durability, like the tests)")
	ttl := fl.Duration("ttl", 10*time.Second, "session TTL of both the daemon and the library's session")
	logLevel := fl.String("log-level", "warn", "log level of the lockfs daemon (its log is printed on failure)")
	handoffs := fl.Int("handoffs", 100, "handoffs between two holders (two daemons; two library sessions) per hold time; 0: skip")
	holds := fl.String("hold", "20ms,150ms", "hold times of the handoff runs, comma-separated: how long the waiter waits before the holder releases")
	_ = fl.Parse(args)
	if *n < *rounds || *rounds < 1 {
		return fmt.Errorf("etcd: want -n >= -rounds >= 1")
	}
	if os.Geteuid() != 0 {
		return errors.New("etcd: run as root (lockfs mounts with a direct FUSE mount)")
	}
	// The Go runtime's preemption signal interrupts open(2) on a FUSE
	// file (EINTR, a restarted lock request); run without it so that the
	// mount is timed as a C program would see it.
	if !strings.Contains(os.Getenv("GODEBUG"), "asyncpreemptoff=1") {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		env := append(os.Environ(), "GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+",asyncpreemptoff=1", ","))
		return syscall.Exec(self, append([]string{os.Args[0], "etcd"}, args...), env)
	}

	tmp, err := os.MkdirTemp("", "lockfs-bench-etcd-")
	if err != nil {
		return err
	}
	b := &etcdBench{tmp: tmp}
	defer b.cleanup()
	defer cleanupOnSignal(b.cleanup)()

	lockfs, err := b.binary(*lockfsPath, "lockfs", "./cmd/lockfs")
	if err != nil {
		return err
	}
	server, err := b.binary(*serverPath, "etcdserver", "./tests/internal/etcdserver")
	if err != nil {
		return err
	}
	url, err := b.startEtcd(server, *fsync)
	if err != nil {
		return err
	}
	mnt, err := b.startLockfs(lockfs, "etcd", *logLevel, "--engine", "etcd", "--etcd-endpoints", url,
		"--etcd-prefix", "/lockfs-bench/", "--etcd-ttl", ttl.String())
	if err != nil {
		return err
	}
	dirMnt, err := b.startLockfs(lockfs, "dir", *logLevel, "--engine", "dir")
	if err != nil {
		return err
	}
	mnt2 := ""
	if *handoffs > 0 {
		// A second daemon on the same etcd and prefix: another "host".
		if mnt2, err = b.startLockfs(lockfs, "etcd2", *logLevel, "--engine", "etcd", "--etcd-endpoints", url,
			"--etcd-prefix", "/lockfs-bench/", "--etcd-ttl", ttl.String()); err != nil {
			return err
		}
	}
	backend, err := etcdlock.New(context.Background(), etcdlock.Options{Endpoints: []string{url},
		Prefix: "/lockfs-bench-backend/", TTL: *ttl})
	if err != nil {
		return fmt.Errorf("etcdlock backend: %w", err)
	}
	defer backend.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int((*ttl+time.Second-1)/time.Second)))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer sess.Close()
	mutex := concurrency.NewMutex(sess, "/lockfs-bench-mutex/x")
	ctx := context.Background()
	var eintr int // opens interrupted (EINTR) and retried, as os.OpenFile does
	openClose := func(path string) error {
		for {
			fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o666)
			if err == unix.EINTR {
				eintr++
				continue
			}
			if err != nil {
				return err
			}
			return unix.Close(fd)
		}
	}
	etcdPath, dirPath := filepath.Join(mnt, "x"), filepath.Join(dirMnt, "x")

	cases := []struct {
		name string
		op   func() error
	}{
		{"etcd Get (linearizable read)", func() error {
			_, err := cli.Get(ctx, "/lockfs-bench-rtt/get")
			return err
		}},
		{"etcd Put (one Raft write)", func() error {
			_, err := cli.Put(ctx, "/lockfs-bench-rtt/put", "v")
			return err
		}},
		{"etcd concurrency.Mutex Lock+Unlock", func() error {
			if err := mutex.Lock(ctx); err != nil {
				return err
			}
			return mutex.Unlock(ctx)
		}},
		{"etcdlock Backend Lock+Unlock (in process)", func() error {
			h, err := backend.Lock(ctx, "x", lockengine.Exclusive, func(error) {})
			if err != nil {
				return err
			}
			return h.Unlock()
		}},
		{"lockfs open+close (dir backend, no etcd)", func() error { return openClose(dirPath) }},
		{"lockfs open+close (etcd backend)", func() error { return openClose(etcdPath) }},
	}
	fmt.Printf("lockfs-bench etcd: single-node etcd %s (fsync %v, data in %s); lockfs %s --engine etcd --etcd-ttl %v;\n"+
		"  %d ops per case in %d interleaved rounds; %d CPUs; load average %s at start\n",
		url, *fsync, tmp, lockfs, *ttl, *n, *rounds, runtime.NumCPU(), loadavg())

	// Warm up every path (connections, the daemon's session, page cache).
	for _, c := range cases {
		for range 50 {
			if err := c.op(); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	lat := make([][]float64, len(cases)) // milliseconds
	per := *n / *rounds
	for range *rounds {
		for i, c := range cases {
			for range per {
				start := time.Now()
				if err := c.op(); err != nil {
					return fmt.Errorf("%s: %w; lockfs daemons' logs:\n%s", c.name, err, b.daemonLog.String())
				}
				lat[i] = append(lat[i], float64(time.Since(start))/1e6)
			}
		}
	}

	fmt.Printf("\n%-40s %9s %9s %9s %9s\n", "per operation (ms)", "median", "p90", "p99", "mean")
	for i, c := range cases {
		s := slices.Clone(lat[i])
		slices.Sort(s)
		fmt.Printf("%-40s %9.3f %9.3f %9.3f %9.3f\n", c.name, median(s), pct(s, 90), pct(s, 99), etcdMean(s))
	}
	get, put, mtx, be, dir, lfs := median(lat[0]), median(lat[1]), median(lat[2]), median(lat[3]), median(lat[4]), median(lat[5])
	diff := lfs - mtx
	fmt.Printf("\nin Put round trips (medians): Mutex %.2f, Backend %.2f, lockfs etcd %.2f; lockfs dir backend %.3f ms\n",
		mtx/put, be/put, lfs/put, dir)
	fmt.Printf("lockfs (etcd) - Mutex: %+.3f ms = %+.2f Put round trips = %+.2f Get round trips\n", diff, diff/put, diff/get)
	fmt.Printf("  of which FUSE + daemon (lockfs dir backend): %.3f ms; etcd backend (lockfs etcd - lockfs dir) - Mutex: %+.3f ms = %+.2f Put round trips\n",
		dir, lfs-dir-mtx, (lfs-dir-mtx)/put)
	fmt.Printf("  Backend - Mutex: %+.3f ms = %+.2f Put round trips\n", be-mtx, (be-mtx)/put)
	if eintr > 0 {
		fmt.Printf("(%d opens were interrupted (EINTR) and retried, as os.OpenFile does)\n", eintr)
	}
	if *handoffs > 0 {
		var hs []time.Duration
		for f := range strings.SplitSeq(*holds, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil || d <= 0 {
				return fmt.Errorf("-hold %q: want positive durations", *holds)
			}
			hs = append(hs, d)
		}
		return b.handoffs(ctx, cli, url, *handoffs, hs, *ttl, [2]string{filepath.Join(mnt, "h"), filepath.Join(mnt2, "h")}, put)
	}
	return nil
}

// acquirer takes a lock and returns the function that releases it.
type acquirer func() (release func() error, err error)

// handoffs measures the handoff latency between two holders taking turns
// on one name: the time from the holder's release to the waiter's grant.
// lockfs: two daemons on one etcd (paths[i] on daemon i), open+close;
// library: two sessions on two clients, Mutex.Lock+Unlock.
//
// The library's waiter watches its predecessor's key from a revision that
// already exists, which etcd serves from its resync loop (every 100 ms);
// etcdlock watches from the next revision. So the library's handoff takes
// up to 100 ms when the waiter arrived less than 100 ms before the
// release, and hold times on both sides of that are measured.
func (b *etcdBench) handoffs(ctx context.Context, cli *clientv3.Client, url string, n int, holds []time.Duration,
	ttl time.Duration, paths [2]string, put float64) error {
	var lfs [2]acquirer
	for i, p := range paths {
		lfs[i] = func() (func() error, error) {
			for {
				fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o666)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return nil, err
				}
				return func() error { return unix.Close(fd) }, nil
			}
		}
	}
	var lib [2]acquirer
	for i := range lib {
		c := cli
		if i == 1 { // a second client: a second "host"
			c2, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				return fmt.Errorf("etcd client: %w", err)
			}
			defer c2.Close()
			c = c2
		}
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(int((ttl+time.Second-1)/time.Second)))
		if err != nil {
			return fmt.Errorf("etcd session: %w", err)
		}
		defer sess.Close()
		m := concurrency.NewMutex(sess, "/lockfs-bench-mutex/h")
		lib[i] = func() (func() error, error) {
			if err := m.Lock(ctx); err != nil {
				return nil, err
			}
			return func() error { return m.Unlock(ctx) }, nil
		}
	}
	for _, hold := range holds {
		fmt.Printf("\nhandoff between two holders, waiter queued %v before the release (%d handoffs, alternating;\n"+
			"ms from the release to the waiter's grant)\n", hold, n)
		fmt.Printf("%-40s %9s %9s %9s %9s\n", "", "median", "p90", "p99", "mean")
		var meds [2]float64
		for i, c := range []struct {
			name string
			acq  [2]acquirer
		}{{"etcd concurrency.Mutex, two sessions", lib}, {"lockfs, two daemons (etcd backend)", lfs}} {
			lat, err := handoffRun(c.acq, n, hold)
			if err != nil {
				return fmt.Errorf("handoff %s: %w; lockfs daemons' logs:\n%s", c.name, err, b.daemonLog.String())
			}
			slices.Sort(lat)
			meds[i] = median(lat)
			fmt.Printf("%-40s %9.3f %9.3f %9.3f %9.3f\n", c.name, meds[i], pct(lat, 90), pct(lat, 99), etcdMean(lat))
		}
		fmt.Printf("lockfs - Mutex handoff (medians): %+.3f ms = %+.2f Put round trips\n", meds[1]-meds[0], (meds[1]-meds[0])/put)
	}
	return nil
}

// handoffRun alternates the lock between the two sides n times and returns
// the handoff latencies in milliseconds. Each time, the waiter starts, and
// hold later (time to queue in etcd and watch: a handoff, not an
// uncontended acquire) the holder releases.
func handoffRun(acq [2]acquirer, n int, hold time.Duration) ([]float64, error) {
	release, err := acq[0]()
	if err != nil {
		return nil, err
	}
	type grant struct {
		release func() error
		err     error
		at      time.Time
	}
	lat := make([]float64, 0, n)
	for i := range n {
		ch := make(chan grant, 1)
		next := acq[(i+1)%2]
		go func() {
			rel, err := next()
			ch <- grant{rel, err, time.Now()}
		}()
		time.Sleep(hold)
		released := time.Now()
		if err := release(); err != nil {
			return nil, err
		}
		g := <-ch
		if g.err != nil {
			return nil, g.err
		}
		lat = append(lat, float64(g.at.Sub(released))/1e6)
		release = g.release
	}
	return lat, release()
}

func etcdMean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// binary returns path if given, else builds pkg of the module around the
// working directory into the temp dir.
func (b *etcdBench) binary(path, name, pkg string) (string, error) {
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("-%s: %w", name, err)
		}
		return abs, nil
	}
	root, ok := moduleRoot()
	if !ok {
		return "", fmt.Errorf("no %s binary: pass -%s PATH or run inside the lockfs module", name, name)
	}
	out := filepath.Join(b.tmp, "bin", name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w: %s", pkg, root, err, bytes.TrimSpace(o))
	}
	return out, nil
}

// start starts cmd (killed if this process dies) and registers it for
// cleanup.
func (b *etcdBench) start(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	b.mu.Lock()
	b.procs = append(b.procs, cmd)
	b.mu.Unlock()
	return nil
}

// startEtcd starts etcdserver and returns its client URL.
func (b *etcdBench) startEtcd(bin string, fsync bool) (string, error) {
	cmd := exec.Command(bin, "-data-dir", filepath.Join(b.tmp, "etcd"), fmt.Sprintf("-fsync=%v", fsync))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := b.start(cmd); err != nil {
		return "", fmt.Errorf("start etcdserver: %w", err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if url, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				lines <- url
			}
		}
		close(lines)
	}()
	select {
	case url, ok := <-lines:
		if !ok {
			return "", fmt.Errorf("etcdserver exited before ready: %s", stderr.String())
		}
		return url, nil
	case <-time.After(2 * time.Minute):
		return "", errors.New("etcdserver not ready within 2m")
	}
}

// startLockfs mounts lockfs with flags (the engine's) on a temp mountpoint
// named after name and waits for its --ready-fd handshake.
func (b *etcdBench) startLockfs(bin, name, logLevel string, flags ...string) (string, error) {
	mnt := filepath.Join(b.tmp, "mnt-"+name)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", err
	}
	args := append([]string{"mount", "--state-dir", filepath.Join(b.tmp, "state-"+name), "--log-level", logLevel,
		"--ready-fd", "3"}, flags...)
	d, err := launch.Start(launch.Options{Path: bin, Args: append(args, mnt), Mountpoint: mnt, ReadyFD: 3,
		LogTo: &b.daemonLog})
	if err != nil {
		return "", fmt.Errorf("start lockfs: %w", err)
	}
	b.mu.Lock()
	b.daemons = append(b.daemons, d)
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.WaitReady(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("lockfs not mounted within 1m: %s", b.daemonLog.String())
		}
		return "", fmt.Errorf("lockfs did not mount (%w): %s", err, b.daemonLog.String())
	}
	return mnt, nil
}

// cleanup stops what the run started (SIGTERM, then SIGKILL after 10 s):
// the lockfs daemons first, detaching a mount still left, then etcd; and
// removes the temp dir. It runs once.
func (b *etcdBench) cleanup() {
	b.once.Do(func() {
		b.mu.Lock()
		procs, daemons := b.procs, b.daemons
		b.mu.Unlock()
		for _, d := range slices.Backward(daemons) {
			_ = d.Stop(10 * time.Second)
		}
		for _, cmd := range slices.Backward(procs) {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() {
				_ = cmd.Wait()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
		_ = os.RemoveAll(b.tmp)
	})
}
