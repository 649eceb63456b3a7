package main

// lockfs-bench soak: a chaos soak of the filesystem (root).
//
//	lockfs-bench soak [-duration 1m] [-daemons 2] [-clients 200] [-names 16]
//	                  [-seed N] [-state-size 64M] [-lock-delay 500ms] [-lockfs PATH]
//	                  [-etcd [-etcd-ttl 3s] [-etcdserver PATH]]
//
// It mounts a small tmpfs under a temp dir, starts -daemons lockfs daemons
// sharing one state directory on it, and runs -clients client processes
// (this binary, re-executed as the hidden 'soak-client') that take and
// release locks on -names names through every interface (open, .shared,
// .try, .timeout, flock, fcntl) and log each grant with its fencing token
// and CLOCK_MONOTONIC times. Meanwhile a chaos loop injects faults: SIGKILL
// and restart of a daemon, SIGKILL of a client holding a lock, SIGSTOP of
// a client, breaks, a full state tmpfs and a read-only state tmpfs. At the
// end an independent checker merges the logs and checks mutual exclusion,
// fencing tokens, stuck waits, D-state processes, daemon RSS and descriptor
// growth and leaked state files. Exit status 1 on any violation.
//
// Notes: daemon 0 is never SIGKILLed (-spare-first) so that one daemon's
// RSS and descriptors are sampled over the whole run. A tmpfs remount,ro
// is refused (EBUSY) while a daemon has a state file open for writing;
// the read-only fault then falls back to a read-only bind mount over the
// state dir. At the end the soak holds n00 and starts -final-waiters
// clients blocked on it, so that stopping the daemons must unblock them
// with an errno. The soak releases n00 before it stops the daemons: a
// descriptor it still held on a stopping daemon's mount could leave its own
// close waiting on that daemon.
//
// With -etcd the daemons use the etcd backend on one single-node etcd
// (tests/internal/etcdserver, built like the lockfs binary unless
// -etcdserver is given) instead of the shared state directory: two hosts
// of one cluster. The state-directory faults do not apply then; the chaos
// loop instead stops etcd (SIGSTOP) for 100-400 ms, well inside the
// sessions' -etcd-ttl. A SIGKILLed daemon's names stay taken until its
// session expires (-etcd-ttl), and the check for leaked state is that no
// request key is left in etcd once the daemons are stopped.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/launch"
	"github.com/lockfs/lockfs/internal/mountinfo"
)

type soakConfig struct {
	duration   time.Duration
	daemons    int
	clients    int
	names      int
	seed       uint64
	stateSize  string
	lockDelay  time.Duration
	etcd       bool
	etcdTTL    time.Duration
	etcdServer string
	lockfs     string
	spareFirst bool

	finalWaiters int
}

// soakRun is the state of one soak run.
type soakRun struct {
	c       soakConfig
	b       *fsBench
	rng     *rand.Rand
	stateFS string // the tmpfs mountpoint
	state   string // the state dir on it
	logs    string // client logs

	mu      sync.Mutex
	slots   []*soakSlot       // one per daemon mountpoint
	clients map[int]*soakProc // live clients by pid
	allLogs []string
	faults  map[string]int
	events  []soakEvent // daemon and client kills, breaks
	samples map[*daemon][]soakSample
	dState  []string
	seq     int
	// restarts: how long each daemon restart after a daemon-kill took
	// (until mounted); startFailures: the errors (with the daemon's log)
	// of restart attempts that failed and were retried. Under mu.
	restarts      []time.Duration
	startFailures []string

	etcd    *etcdBench // the etcd server (-etcd), stopped after the daemons
	etcdURL string

	cleanOnce sync.Once
	ending    bool // under mu: the run kills the clients left, their exits are not recorded
}

type soakSlot struct {
	idx int
	mnt string
	d   *daemon
}

type soakProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// soakEvent is an event the checker needs: kind "daemon-kill" (slot =
// mount index), "daemon-up" (a daemon of slot is mounted), "daemon-stop"
// (the final SIGTERM of slot's daemon), "client-kill" (pid, log),
// "client-exit" (pid, log; name = the exit error: a client that failed or
// died before the end, for whatever reason) or "break" (name). t is
// CLOCK_MONOTONIC ns, taken before a kill or stop and after a start.
type soakEvent struct {
	kind string
	t    int64
	slot int
	pid  int
	log  string // client-kill: the client's log file, unique to it
	name string
}

type soakSample struct {
	t      time.Duration
	rssKiB int64
	fds    int
}

func runSoak(args []string) error {
	fl := flag.NewFlagSet("soak", flag.ExitOnError)
	var c soakConfig
	fl.DurationVar(&c.duration, "duration", time.Minute, "how long the clients and the chaos run")
	fl.IntVar(&c.daemons, "daemons", 2, "daemons sharing the state directory")
	fl.IntVar(&c.clients, "clients", 200, "client processes")
	fl.IntVar(&c.names, "names", 16, "lock names")
	fl.Uint64Var(&c.seed, "seed", 0, "random seed (0: from the clock)")
	fl.StringVar(&c.stateSize, "state-size", "64M", "size of the state tmpfs")
	fl.DurationVar(&c.lockDelay, "lock-delay", 500*time.Millisecond, "the daemons' --lock-delay (longer than the longest SIGSTOP, 200ms)")
	fl.BoolVar(&c.etcd, "etcd", false, "run the daemons on the etcd backend, on one local etcd, instead of a shared state directory")
	fl.DurationVar(&c.etcdTTL, "etcd-ttl", 3*time.Second, "with -etcd: the daemons' --etcd-ttl (how long a killed daemon's names stay taken)")
	fl.StringVar(&c.etcdServer, "etcdserver", "", "with -etcd: the etcdserver binary (default: go build ./tests/internal/etcdserver of the module)")
	fl.StringVar(&c.lockfs, "lockfs", "", "lockfs binary (default: go build ./cmd/lockfs of the module around the working dir, else lockfs next to this binary)")
	fl.IntVar(&c.finalWaiters, "final-waiters", 5, "clients started at the end that wait on a name the soak holds, so that the shutdown must unblock them")
	fl.BoolVar(&c.spareFirst, "spare-first", true, "never SIGKILL daemon 0, so that its RSS and descriptors are sampled over the whole run")
	_ = fl.Parse(args)
	if c.daemons < 1 || c.clients < 1 || c.names < 1 {
		return errors.New("soak: -daemons, -clients and -names must be at least 1")
	}
	if os.Geteuid() != 0 {
		return errors.New("soak: needs root (it mounts a tmpfs and FUSE filesystems)")
	}
	if c.seed == 0 {
		c.seed = uint64(time.Now().UnixNano())
	}
	tmp, err := os.MkdirTemp("", "lockfs-bench-soak-")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r := &soakRun{c: c, rng: rand.New(rand.NewPCG(c.seed, 0x50a4)),
		b:       &fsBench{tmp: tmp, self: self, procs: map[*exec.Cmd]*proc{}},
		stateFS: filepath.Join(tmp, "statefs"), logs: filepath.Join(tmp, "logs"),
		clients: map[int]*soakProc{}, faults: map[string]int{}, samples: map[*daemon][]soakSample{}}
	r.state = filepath.Join(r.stateFS, "state")
	defer r.cleanup()
	// Finish (and clean up) even if stdout is a pipe whose reader left.
	signal.Ignore(syscall.SIGPIPE)
	defer cleanupOnSignal(r.cleanup)()

	lockfsBin, how, err := locateLockfs(c.lockfs, tmp, self)
	if err != nil {
		return err
	}
	r.b.lockfs = lockfsBin
	if err := os.MkdirAll(r.stateFS, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(r.logs, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("lockfs-soak", r.stateFS, "tmpfs", 0, "size="+c.stateSize+",mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", r.stateFS, err)
	}
	if err := os.Mkdir(r.state, 0o700); err != nil {
		return err
	}
	backend := "dir backend, one state dir on a " + c.stateSize + " tmpfs"
	if c.etcd {
		r.etcd = &etcdBench{tmp: filepath.Join(tmp, "etcd")}
		if err := os.Mkdir(r.etcd.tmp, 0o755); err != nil {
			return err
		}
		server, err := r.etcd.binary(c.etcdServer, "etcdserver", "./tests/internal/etcdserver")
		if err != nil {
			return err
		}
		if r.etcdURL, err = r.etcd.startEtcd(server, false); err != nil {
			return err
		}
		backend = fmt.Sprintf("etcd backend, one etcd at %s, --etcd-ttl %v", r.etcdURL, c.etcdTTL)
	}
	fmt.Printf("lockfs-bench soak: lockfs %s (%s); seed %d; %d daemons, %d clients, %d names, %v, lock-delay %v, %s; %d CPUs; load average %s\n",
		lockfsBin, how, c.seed, c.daemons, c.clients, c.names, c.duration, c.lockDelay, backend, runtime.NumCPU(), loadavg())

	for i := range c.daemons {
		s := &soakSlot{idx: i, mnt: filepath.Join(tmp, fmt.Sprintf("d%d", i), "mnt")}
		r.slots = append(r.slots, s)
		if err := r.startDaemon(s); err != nil {
			return err
		}
	}
	mounts := make([]string, len(r.slots))
	for i, s := range r.slots {
		mounts[i] = s.mnt
	}
	start := time.Now()
	startMono := monoNow()
	until := startMono + c.duration.Nanoseconds()
	for range c.clients {
		if err := r.startClient(mounts, until); err != nil {
			return err
		}
	}
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() { r.sample(start, stopSampling) })

	chaosErr := r.chaos(mounts, until)

	// The end: clients stop starting attempts at the deadline; those
	// still waiting after a grace are unblocked by stopping the daemons.
	// The first grace is short so that waits still queued are ended by
	// the shutdown (with an errno) rather than by grants; the second
	// bounds the shutdown.
	endMono := monoNow()
	// Make sure some waits are still blocked at the shutdown: hold n00
	// through daemon 0 and start -final-waiters clients that each make
	// one blocking open of it.
	holdFD := r.finalWaiters(mounts)
	r.waitClients(2 * time.Second)
	blockedAtEnd := r.liveClients()
	r.checkDState("after the duration")
	close(stopSampling)
	sampling.Wait()
	// Release n00 first, then stop the daemons: the next final waiter is
	// granted and the others stay blocked until the stop ends them.
	if holdFD >= 0 {
		_ = unix.Close(holdFD)
	}
	r.mu.Lock()
	var ds []*daemon
	for _, s := range r.slots {
		ds = append(ds, s.d)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for i, d := range ds {
		r.record(soakEvent{kind: "daemon-stop", t: monoNow(), slot: i})
		wg.Go(d.stop)
	}
	grace := 10 * time.Second
	r.waitClients(grace)
	stuck := r.liveClients()
	r.checkDState("after stopping the daemons")
	wg.Wait()
	var lockFiles int
	var lockNames []string
	if c.etcd {
		lockFiles, lockNames = r.etcdRequestKeys()
	} else {
		lockFiles, lockNames = countDir(filepath.Join(r.state, "locks"))
	}
	r.mu.Lock()
	r.ending = true // the kills below are of stuck clients, reported as such
	r.mu.Unlock()
	r.b.killClients()
	elapsed := time.Since(start)

	rep := checkSoak(r.allLogs, r.events, startMono, endMono)
	rep.blockedAtEnd = len(blockedAtEnd)
	rep.stuck = len(stuck)
	for _, pid := range stuck {
		rep.addViolation(fmt.Sprintf("client %d still running %v after the daemons were stopped (stuck wait; killed)", pid, grace))
	}
	for _, s := range r.dState {
		rep.addViolation(s)
	}
	if chaosErr != nil {
		rep.addViolation("chaos: " + chaosErr.Error())
	}
	switch {
	case c.etcd && lockFiles != 0:
		rep.addViolation(fmt.Sprintf("%d request keys left in etcd after the daemons stopped: %s", lockFiles, strings.Join(lockNames, " ")))
	case !c.etcd && lockFiles > c.names:
		rep.addViolation(fmt.Sprintf("%d files in STATE/locks for %d names: %s", lockFiles, c.names, strings.Join(lockNames, " ")))
	}
	r.print(rep, elapsed, lockFiles, lockNames)
	if len(rep.violations) > 0 {
		// The temp dir goes with the cleanup; the client logs are what
		// a violation is diagnosed from.
		if kept, err := os.MkdirTemp("", "lockfs-soak-logs-"); err == nil {
			if err := os.CopyFS(kept, os.DirFS(r.logs)); err == nil {
				fmt.Printf("client and chaos logs kept in %s\n", kept)
			} else {
				fmt.Fprintf(os.Stderr, "lockfs-bench: keeping the logs: %v\n", err)
			}
		}
		return fmt.Errorf("%d violations", len(rep.violations))
	}
	return nil
}

// startDaemon starts (or restarts) the daemon of slot s on the shared
// state dir and waits for its mount.
func (r *soakRun) startDaemon(s *soakSlot) error {
	d := &daemon{name: fmt.Sprintf("d%d", s.idx), dir: filepath.Dir(s.mnt), mnt: s.mnt}
	if err := os.MkdirAll(s.mnt, 0o755); err != nil {
		return err
	}
	state := r.state
	var engine []string
	if r.c.etcd {
		// The etcd backend keeps no state in the directory; each daemon
		// has one of its own all the same.
		state = filepath.Join(r.state, d.name)
		engine = []string{"--engine", "etcd", "--etcd-endpoints", r.etcdURL, "--etcd-prefix", soakEtcdPrefix,
			"--etcd-ttl", r.c.etcdTTL.String()}
	}
	args := append([]string{"mount", "--state-dir", state, "--log-level", "warn", "--ready-fd", "3",
		"--lock-delay", r.c.lockDelay.String()}, engine...)
	args = append(args, s.mnt)
	if err := r.b.run(d, launch.Options{Path: r.b.lockfs, Args: args, ReadyFD: 3}); err != nil {
		return err
	}
	r.record(soakEvent{kind: "daemon-up", t: monoNow(), slot: s.idx})
	r.mu.Lock()
	s.d = d
	r.mu.Unlock()
	return nil
}

// soakEtcdPrefix is the daemons' --etcd-prefix with -etcd.
const soakEtcdPrefix = "/lockfs-soak/"

// etcdRequestKeys returns the request keys (holders and waiters, NAME/q/...)
// left under the soak's prefix, waiting up to the session TTL and 5 s for
// those of SIGKILLed daemons to expire.
func (r *soakRun) etcdRequestKeys() (int, []string) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{r.etcdURL}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return -1, []string{err.Error()}
	}
	defer cli.Close()
	deadline := time.Now().Add(r.c.etcdTTL + 5*time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := cli.Get(ctx, soakEtcdPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return -1, []string{err.Error()}
		}
		var keys []string
		for _, kv := range resp.Kvs {
			if strings.Contains(string(kv.Key), "/q/") {
				keys = append(keys, string(kv.Key))
			}
		}
		if len(keys) == 0 || time.Now().After(deadline) {
			return len(keys), keys
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// finalWaiters takes n00 exclusively through daemon 0 (waiting up to 5 s)
// and starts the final waiters, clients that make one blocking open of
// n00 each. It returns the held descriptor, or -1.
func (r *soakRun) finalWaiters(mounts []string) int {
	if r.c.finalWaiters <= 0 {
		return -1
	}
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		for {
			// The Go runtime's preemption signal can interrupt the
			// blocking open (EINTR): open again, as os.OpenFile does.
			fd, err := unix.Open(filepath.Join(mounts[0], "n00"), unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != unix.EINTR {
				ch <- res{fd, err}
				return
			}
		}
	}()
	select {
	case rs := <-ch:
		if rs.err != nil {
			fmt.Fprintf(os.Stderr, "lockfs-bench soak: final hold of n00: %v; no final waiters\n", rs.err)
			return -1
		}
		for range r.c.finalWaiters {
			if err := r.startClient(mounts, 0, "-once"); err != nil {
				fmt.Fprintf(os.Stderr, "lockfs-bench soak: final waiter: %v\n", err)
			}
		}
		return rs.fd
	case <-time.After(5 * time.Second):
		// Still queued: the shutdown unblocks this open too.
		fmt.Fprintln(os.Stderr, "lockfs-bench soak: final hold of n00 not granted in 5s; no final waiters")
		go func() {
			if rs := <-ch; rs.err == nil {
				_ = unix.Close(rs.fd)
			}
		}()
		return -1
	}
}

func (r *soakRun) startClient(mounts []string, until int64, extra ...string) error {
	r.mu.Lock()
	r.seq++
	log := filepath.Join(r.logs, fmt.Sprintf("c%05d.log", r.seq))
	seed := r.rng.Uint64()
	r.allLogs = append(r.allLogs, log)
	r.mu.Unlock()
	args := append([]string{"soak-client", "-log", log, "-mounts", strings.Join(mounts, ","),
		"-names", strconv.Itoa(r.c.names), "-seed", strconv.FormatUint(seed, 10), "-until", strconv.FormatInt(until, 10)}, extra...)
	cmd := exec.Command(r.b.self, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "GOGC=400")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.b.start(cmd); err != nil {
		return err
	}
	p := &soakProc{cmd: cmd, log: log, done: make(chan struct{})}
	r.mu.Lock()
	r.clients[cmd.Process.Pid] = p
	r.mu.Unlock()
	go func() {
		err := r.b.wait(cmd)
		t := monoNow()
		r.mu.Lock()
		delete(r.clients, cmd.Process.Pid)
		if err != nil && !r.ending {
			// Recorded for the checker: a chaos kill explains a
			// "signal: killed"; anything else is a client that failed
			// (its panic, if any, went to stderr).
			r.events = append(r.events, soakEvent{kind: "client-exit", t: t, pid: cmd.Process.Pid, log: log, name: err.Error()})
		}
		r.mu.Unlock()
		close(p.done)
	}()
	return nil
}

func (r *soakRun) liveClients() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var pids []int
	for pid := range r.clients {
		pids = append(pids, pid)
	}
	return pids
}

// waitClients waits up to d for every client to exit.
func (r *soakRun) waitClients(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && len(r.liveClients()) > 0 {
		time.Sleep(50 * time.Millisecond)
	}
}

// checkDState records a violation for every client or daemon in D state
// in three looks 500 ms apart (a moment in D is normal).
func (r *soakRun) checkDState(when string) {
	pids := r.liveClients()
	r.mu.Lock()
	for _, s := range r.slots {
		if s.d != nil && s.d.proc != nil && !s.d.proc.Exited() {
			pids = append(pids, s.d.pid())
		}
	}
	r.mu.Unlock()
	inD := map[int]int{}
	for i := range 3 {
		if i > 0 {
			time.Sleep(500 * time.Millisecond)
		}
		for _, pid := range pids {
			if st := launch.ProcState(pid); strings.HasPrefix(st, "D") {
				inD[pid]++
			}
		}
	}
	for pid, n := range inD {
		if n == 3 {
			r.mu.Lock()
			r.dState = append(r.dState, fmt.Sprintf("pid %d in D state %s: %s", pid, when, launch.ProcState(pid)))
			r.mu.Unlock()
		}
	}
}

// sample records each live daemon's RSS and descriptor count every second.
func (r *soakRun) sample(start time.Time, stop chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		r.mu.Lock()
		var ds []*daemon
		for _, s := range r.slots {
			if s.d != nil && !s.d.proc.Exited() {
				ds = append(ds, s.d)
			}
		}
		r.mu.Unlock()
		for _, d := range ds {
			m, err := readMem(d.pid())
			if err != nil {
				continue
			}
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid()))
			if err != nil {
				continue
			}
			r.mu.Lock()
			r.samples[d] = append(r.samples[d], soakSample{t: time.Since(start), rssKiB: m.rss, fds: len(ents)})
			r.mu.Unlock()
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// cleanup stops the clients and daemons, detaches the mounts and the
// state tmpfs and removes the temp dir (fsBench.cleanup). It runs once.
func (r *soakRun) cleanup() { r.cleanOnce.Do(r.doCleanup) }

func (r *soakRun) doCleanup() {
	r.b.killClients()
	r.b.mu.Lock()
	ds := append([]*daemon(nil), r.b.daemons...)
	r.b.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(d.stop)
	}
	wg.Wait()
	if r.etcd != nil {
		r.etcd.cleanup()
	}
	if ok, _ := mountinfo.IsMounted(r.stateFS); ok {
		if err := unix.Unmount(r.stateFS, unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "lockfs-bench: umount %s: %v\n", r.stateFS, err)
		}
	}
	r.b.cleanup()
}

func countDir(dir string) (int, []string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1, []string{err.Error()}
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return len(ents), names
}
