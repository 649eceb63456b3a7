package main

// lockfs-bench fs: the speed and memory figures of the filesystem,
// measured side by side in one run on this machine (root, gcc, bash and
// util-linux flock needed).
//
//	lockfs-bench fs [-lockfs PATH] [-lockfs-env K=V,...] [-parts trace,1,2,3,4,calls,cross,tree]
//	                [-n N] [-chunk N] [-rounds R] [-bash N] [-handoffs N]
//	                [-handoff-runs R] [-blocked N] [-names N] [-probe N]
//	                [-cross-clients N] [-base-lockfs PATH]
//	                [-tree-depth N] [-tree-wide N]
//
// It mounts lockfs (the daemon as a subprocess, on a temp mountpoint with a
// temp state dir) and the floor, a no-op go-fuse filesystem served by a
// child process of this binary (a process must not use a FUSE mount it
// serves), and drives them with a small C client compiled at run time.
// Figures:
//
//	trace  FUSE requests per open+close reaching lockfs and the floor
//	1      uncontended open+close: lockfs vs the floor vs local flock
//	2      bash 'exec 9>M/x; exec 9>&-' loop vs a 'flock F true' loop
//	3      release->grant latency between two processes on one daemon,
//	       against the locking floor (in-memory mutexes) and local flock
//	4      daemon RSS with 1,000 blocked openers and with 10,000 held names
//	       (and after they are gone, for up to -settle),
//	       and an unrelated name's open+close time meanwhile
//	calls  lock calls: flock(1) and C flock(2) loops on lockfs against the
//	       write open and local flock, and flock(2) handoff latency
//	cross  handoff between two daemons on one state directory (latency,
//	       share of grants per daemon), against one daemon and local flock
//	       (fs_cross.go; not in the default parts)
//	tree   open+close of names in lock directories (M/a/b/c/name, a deep
//	       chain, a wide directory) against M/name (fs_tree.go; not in
//	       the default parts)
//
// Everything it starts is stopped, unmounted and removed at the end, on
// error and on SIGINT/SIGTERM.

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type fsConfig struct {
	lockfs      string
	n           int
	rounds      int
	bashN       int
	bashRounds  int
	handoffs    int
	handoffRuns int
	blocked     int
	names       int
	probeN      int
	lockfsEnv   string
	parts       string
	chunk       int
	// cross part
	crossClients int
	baseLockfs   string
	// part 4
	settle time.Duration
	// tree part
	treeDepth int
	treeWide  int
}

// fsParts are the parts 'lockfs-bench fs -parts' knows, in the order they
// run.
var fsParts = []string{"trace", "1", "2", "3", "4", "calls", "cross", "tree"}

// parseParts parses the -parts list (comma-separated, blanks around names
// ignored) into the set of parts to run; a name not in fsParts is an
// error, so that a typo does not silently measure nothing.
func parseParts(s string) (map[string]bool, error) {
	want := map[string]bool{}
	for p := range strings.SplitSeq(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !slices.Contains(fsParts, p) {
			return nil, fmt.Errorf("fs: unknown part %q in -parts (known: %s)", p, strings.Join(fsParts, ","))
		}
		want[p] = true
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("fs: -parts %q names no part (known: %s)", s, strings.Join(fsParts, ","))
	}
	return want, nil
}

func runFS(args []string) error {
	fl := flag.NewFlagSet("fs", flag.ExitOnError)
	var c fsConfig
	fl.StringVar(&c.lockfs, "lockfs", "", "lockfs binary (default: go build ./cmd/lockfs of the module around the working dir, else lockfs next to this binary)")
	fl.IntVar(&c.n, "n", 20000, "open+close per uncontended round")
	fl.StringVar(&c.parts, "parts", "trace,1,2,3,4,calls", "which figures to measure (comma-separated: trace,1,2,3,4,calls,cross,tree)")
	fl.IntVar(&c.chunk, "chunk", 1000, "uncontended figure: operations per case before switching to the next case")
	fl.IntVar(&c.rounds, "rounds", 5, "interleaved rounds of the uncontended and bash figures")
	fl.IntVar(&c.bashN, "bash", 1000, "iterations of the bash loops")
	fl.IntVar(&c.handoffs, "handoffs", 1000, "handoffs per contended run")
	fl.IntVar(&c.handoffRuns, "handoff-runs", 3, "contended runs")
	fl.IntVar(&c.blocked, "blocked", 1000, "processes blocked on one name")
	fl.IntVar(&c.names, "names", 10000, "names held at once")
	fl.IntVar(&c.probeN, "probe", 3000, "open+close per round of the unrelated-name probe")
	fl.IntVar(&c.crossClients, "cross-clients", 2, "cross part: clients per mount")
	fl.DurationVar(&c.settle, "settle", 100*time.Second, "part 4: how long to follow the daemon's RSS after a burst ends")
	fl.IntVar(&c.treeDepth, "tree-depth", 32, "tree part: levels of the deep chain d00/d01/...")
	fl.IntVar(&c.treeWide, "tree-wide", 10000, "tree part: directories under M/wide")
	fl.StringVar(&c.baseLockfs, "base-lockfs", "", "cross part: also measure two daemons of this lockfs binary (e.g. an older build)")
	serveFloorAt := fl.String("serve-floor", "", "internal: serve the floor filesystem at this mountpoint")
	lockFlag := fl.Bool("floor-lock", false, "internal: with -serve-floor, make each file an in-memory mutex")
	debugFlag := fl.Bool("floor-debug", false, "internal: with -serve-floor, print go-fuse's request trace on stderr")
	fl.StringVar(&c.lockfsEnv, "lockfs-env", "", "extra environment of the lockfs daemons, comma-separated K=V (e.g. GOMAXPROCS=1)")
	_ = fl.Parse(args)
	if *serveFloorAt != "" {
		return serveFloor(*serveFloorAt, *lockFlag, *debugFlag)
	}
	c.bashRounds = c.rounds
	want, err := parseParts(c.parts)
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "lockfs-bench-fs-")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	b := &fsBench{tmp: tmp, self: self, procs: map[*exec.Cmd]*proc{}}
	if c.lockfsEnv != "" {
		b.env = strings.Split(c.lockfsEnv, ",")
	}
	defer b.cleanup()
	// Finish (and clean up) even if stdout is a pipe whose reader left.
	signal.Ignore(syscall.SIGPIPE)
	defer cleanupOnSignal(b.cleanup)()

	start := time.Now()
	lockfsBin, how, err := locateLockfs(c.lockfs, tmp, self)
	if err != nil {
		return err
	}
	b.lockfs = lockfsBin
	if b.client, err = compileClient(tmp); err != nil {
		return err
	}
	env := ""
	if len(b.env) > 0 {
		env = " with " + strings.Join(b.env, " ")
	}
	fmt.Printf("lockfs-bench fs: lockfs %s (%s)%s; %d CPUs; load average %s at start\n",
		lockfsBin, how, env, runtime.NumCPU(), loadavg())

	if want["trace"] {
		if err := b.traceRequests(); err != nil {
			return err
		}
	}
	if want["1"] || want["2"] || want["3"] {
		lfs, err := b.startLockfs("lockfs")
		if err != nil {
			return err
		}
		floor, err := b.startFloor("floor", nil)
		if err != nil {
			return err
		}
		var floorLock *daemon
		if want["1"] || want["3"] {
			if floorLock, err = b.startFloor("floor-lock", []string{"-floor-lock"}); err != nil {
				return err
			}
		}
		if want["1"] {
			floor1, err := b.startFloor("floor-1p", nil, "GOMAXPROCS=1")
			if err != nil {
				return err
			}
			if err := b.uncontended(c, lfs, floor, floorLock, floor1); err != nil {
				return err
			}
		}
		if want["2"] {
			if err := b.bashLoops(c, lfs, floor); err != nil {
				return err
			}
		}
		if want["3"] {
			if err := b.handoff(c, lfs, floorLock); err != nil {
				return err
			}
		}
	}
	if want["4"] {
		if err := b.blockedMany(c); err != nil {
			return err
		}
		if err := b.manyNames(c); err != nil {
			return err
		}
	}
	if want["calls"] {
		if err := b.lockCalls(c); err != nil {
			return err
		}
	}
	if want["cross"] {
		if err := b.crossDaemons(c); err != nil {
			return err
		}
	}
	if want["tree"] {
		if err := b.treeOpens(c); err != nil {
			return err
		}
	}

	fmt.Printf("load average %s at end; %.0f s\n", loadavg(), time.Since(start).Seconds())
	return nil
}

var rxRE = regexp.MustCompile(`\brx \d+: ([A-Z_0-9]+)`)

// traceRequests counts, from go-fuse's debug trace, the FUSE requests per
// operation that reach lockfs and the floor: a C open(O_RDWR)+close and
// bash's 'exec 9>M/x; exec 9>&-'.
func (b *fsBench) traceRequests() error {
	lt, err := b.startLockfs("lockfs-trace", "--debug-fuse")
	if err != nil {
		return err
	}
	defer lt.stop()
	ft, err := b.startFloor("floor-trace", []string{"-floor-debug"})
	if err != nil {
		return err
	}
	defer ft.stop()
	const ops = 200
	for _, d := range []*daemon{lt, ft} {
		path := filepath.Join(d.mnt, "x")
		// The first open looks the name up; later ones find it cached.
		if _, err := b.clientNs("open", path, 1); err != nil {
			return err
		}
		cOps, err := d.countRequests(ops, func() error { _, err := b.clientNs("open", path, ops); return err })
		if err != nil {
			return err
		}
		bashOps, err := d.countRequests(ops, func() error { _, err := b.bashLoop(bashExecLoop, path, ops); return err })
		if err != nil {
			return err
		}
		fmt.Printf("FUSE requests per op reaching %s (go-fuse debug trace, %d ops): C open(O_RDWR)+close: %s; bash 'exec 9>M/x; exec 9>&-': %s\n",
			strings.TrimSuffix(d.name, "-trace"), ops, cOps, bashOps)
	}
	return nil
}

// countRequests runs run (ops operations) and returns the FUSE requests per
// operation that appeared in the daemon's debug trace meanwhile.
func (d *daemon) countRequests(ops int, run func() error) (string, error) {
	time.Sleep(100 * time.Millisecond)
	before := d.log()
	if err := run(); err != nil {
		return "", err
	}
	// RELEASE is asynchronous: let the last one arrive.
	time.Sleep(300 * time.Millisecond)
	after := d.log()
	counts := map[string]int{}
	for _, m := range rxRE.FindAllStringSubmatch(after[len(before):], -1) {
		counts[m[1]]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(counts[k])/float64(ops)))
	}
	return strings.Join(parts, ", "), nil
}

// uncontended is figure 1: open+close of one name by a C client on lockfs
// and on the floor (the pair the lockfs/floor ratio compares), and for context: the floor with an
// in-memory lock (what lockfs's semantics cost at best: an open that
// overtakes the previous close's asynchronous RELEASE must wait for it),
// the floor served with GOMAXPROCS=1, lockfs alternating two names (no
// overtaking), shell-style opens (O_TRUNC: the kernel asks for
// security.capability when xattrs are on), and open+flock+unlock+close on
// the state dir's filesystem. Each round runs c.n operations of each case
// in alternating chunks of c.chunk, so that all cases see the same machine
// (other load comes and goes in bursts); ratios are taken per round.
func (b *fsBench) uncontended(c fsConfig, lfs, floor, floorLock, floor1 *daemon) error {
	specs := []string{
		"o:" + filepath.Join(lfs.mnt, "x"),
		"o:" + filepath.Join(floor.mnt, "x"),
		"o:" + filepath.Join(floorLock.mnt, "x"),
		"f:" + filepath.Join(lfs.dir, "local-flock"),
		"o:" + filepath.Join(floor1.mnt, "x"),
		"a:" + filepath.Join(lfs.mnt, "x"),
		"t:" + filepath.Join(lfs.mnt, "x"),
		"t:" + filepath.Join(floor.mnt, "x"),
	}
	ns, err := b.rounds(c, specs...)
	if err != nil {
		return err
	}
	vsFloor, vsLock, vsLocal := perRound(ns, 0, 1), perRound(ns, 0, 2), perRound(ns, 0, 3)
	us := func(ns []float64) string {
		var parts []string
		for _, v := range ns {
			parts = append(parts, fmt.Sprintf("%.1f", v/1000))
		}
		return strings.Join(parts, " ")
	}
	ratios := func(xs []float64) string {
		var parts []string
		for _, v := range xs {
			parts = append(parts, fmt.Sprintf("%.2f", v))
		}
		return strings.Join(parts, " ")
	}
	ratio := median(vsFloor)
	fmt.Printf("1. uncontended open(O_RDWR)+close of one name, C client, %d per case per round in alternating chunks of %d, %d rounds (medians):\n",
		c.n, c.chunk, c.rounds)
	fmt.Printf("   lockfs                                          %6.1f us/op  (rounds: %s)\n", median(ns[0])/1000, us(ns[0]))
	fmt.Printf("   floor: go-fuse, Open/Release no-op, fastest     %6.1f us/op  (rounds: %s)\n", median(ns[1])/1000, us(ns[1]))
	fmt.Printf("   floor + in-memory lock (chan) in Open/Release   %6.1f us/op  (rounds: %s)\n", median(ns[2])/1000, us(ns[2]))
	fmt.Printf("   floor served with GOMAXPROCS=1                  %6.1f us/op  (rounds: %s)\n", median(ns[4])/1000, us(ns[4]))
	fmt.Printf("   lockfs, alternating two names                   %6.1f us/op  (rounds: %s)\n", median(ns[5])/1000, us(ns[5]))
	fmt.Printf("   lockfs, shell-style open O_WRONLY|O_CREAT|O_TRUNC %4.1f us/op  (rounds: %s)\n", median(ns[6])/1000, us(ns[6]))
	fmt.Printf("   floor, shell-style open O_WRONLY|O_CREAT|O_TRUNC  %4.1f us/op  (rounds: %s)\n", median(ns[7])/1000, us(ns[7]))
	fmt.Printf("   local open+flock(EX)+flock(UN)+close            %6.2f us/op\n", median(ns[3])/1000)
	fmt.Printf("   lockfs/floor %.2fx (rounds: %s)\n", ratio, ratios(vsFloor))
	fmt.Printf("   lockfs/(floor + in-memory lock) %.2fx; lockfs/local flock %.1fx\n", median(vsLock), median(vsLocal))
	return nil
}

// rounds warms up (lookups, page cache, the daemons' threads), then runs
// c.rounds rounds of c.n operations of each spec in alternating chunks of
// c.chunk (see multiNs), and returns each spec's ns/op, one per round.
func (b *fsBench) rounds(c fsConfig, specs ...string) ([][]float64, error) {
	if _, err := b.multiNs(min(2000, c.n), 500, specs...); err != nil {
		return nil, err
	}
	ns := make([][]float64, len(specs))
	for range c.rounds {
		r, err := b.multiNs(c.n, c.chunk, specs...)
		if err != nil {
			return nil, err
		}
		for i := range r {
			ns[i] = append(ns[i], r[i])
		}
	}
	return ns, nil
}

// perRound returns, per round, the ratio of spec i's time to spec j's.
func perRound(ns [][]float64, i, j int) []float64 {
	out := make([]float64, len(ns[i]))
	for k := range out {
		out[k] = ns[i][k] / ns[j][k]
	}
	return out
}

const (
	bashExecLoop  = `for ((i=0;i<$2;i++)); do exec 9>"$1"; exec 9>&-; done`
	bashFlockLoop = `for ((i=0;i<$2;i++)); do flock "$1" true; done`
)

// bashLoop runs a bash loop of n iterations on path and returns its wall
// time.
func (b *fsBench) bashLoop(script, path string, n int) (time.Duration, error) {
	cmd := exec.Command("bash", "-c", script, "bash", path, strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if _, err := b.output(cmd, 5*time.Minute); err != nil {
		return 0, fmt.Errorf("bash loop on %s: %w: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return time.Since(t0), nil
}

// bashLoops is figure 2: a bash loop of 'exec 9>M/x; exec 9>&-' against one
// of util-linux 'flock F true', in interleaved rounds.
func (b *fsBench) bashLoops(c fsConfig, lfs, floor *daemon) error {
	flockBin, err := exec.LookPath("flock")
	if err != nil {
		return fmt.Errorf("util-linux flock: %w", err)
	}
	cases := []struct {
		script, path string
		d            []float64
	}{
		{bashExecLoop, filepath.Join(lfs.mnt, "x"), nil},
		{bashExecLoop, filepath.Join(floor.mnt, "x"), nil},
		{bashFlockLoop, filepath.Join(b.tmp, "flock-x"), nil},
	}
	var ratios []float64
	for r := range c.bashRounds {
		for k := range cases {
			i := (k + r) % len(cases)
			d, err := b.bashLoop(cases[i].script, cases[i].path, c.bashN)
			if err != nil {
				return err
			}
			cases[i].d = append(cases[i].d, float64(d.Nanoseconds()))
		}
		ratios = append(ratios, cases[2].d[r]/cases[0].d[r])
	}
	ms := func(ns []float64) string { return fmt.Sprintf("%.0f ms", median(ns)/1e6) }
	per := func(ns []float64) string { return fmt.Sprintf("%.0f us", median(ns)/1e3/float64(c.bashN)) }
	ratio := median(ratios)
	fmt.Printf("2. bash loop of %d, %d interleaved rounds (medians):\n", c.bashN, c.bashRounds)
	fmt.Printf("   lockfs 'exec 9>M/x; exec 9>&-'   %8s (%s per iteration)\n", ms(cases[0].d), per(cases[0].d))
	fmt.Printf("   floor  'exec 9>M/x; exec 9>&-'   %8s (%s per iteration)\n", ms(cases[1].d), per(cases[1].d))
	fmt.Printf("   '%s /tmp/F true'       %8s (%s per iteration)\n", flockBin, ms(cases[2].d), per(cases[2].d))
	fmt.Printf("   flock(1)/lockfs %.1fx (time of the flock(1) loop over the lockfs loop)\n", ratio)
	return nil
}

// handoff is figure 3: two C processes alternately hold one name, each
// handoff timed from just before the release in one process to just after
// the grant in the other (CLOCK_MONOTONIC is shared), in three cases
// measured in turn in every run: lockfs (open/close), the locking floor
// (open/close on a go-fuse mount whose files are in-memory mutexes: what any
// FUSE lock costs) and local flock(2) on the temp directory (one descriptor
// each, flock(EX)/flock(UN): what the kernel's own lock costs).
func (b *fsBench) handoff(c fsConfig, lfs, floorLock *daemon) error {
	local := filepath.Join(b.tmp, "handoff-local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(local, "handoff"), nil, 0o644); err != nil {
		return err
	}
	cases := []handoffCase{
		{what: "lockfs, open/close", mode: "handoff", path: filepath.Join(lfs.mnt, "handoff")},
		{what: "floor-lock, open/close", mode: "handoff", path: filepath.Join(floorLock.mnt, "handoff")},
		{what: "local flock(2)", mode: "fhandoff", path: filepath.Join(local, "handoff")},
	}
	if err := b.runHandoffCases(c, cases); err != nil {
		return err
	}
	fmt.Printf("3. contended handoff, two C processes alternately holding one name (hold 0.5-3 ms), %d runs x ~%d handoffs;\n",
		c.handoffRuns, cases[0].n)
	fmt.Printf("   release->grant in us, median over runs (range):\n")
	printHandoffCases("   ", 24, cases)
	fmt.Printf("   lockfs/local flock: %s; floor-lock/local flock: %s; lockfs/floor-lock: %s\n",
		cases[0].ratio(cases[2], "%.2f"), cases[1].ratio(cases[2], "%.2f"), cases[0].ratio(cases[1], "%.2f"))
	return nil
}

// probe measures open+close of path (an unrelated name on the daemon under
// test) in rounds, each interleaved in chunks with open+close on control (a
// floor mount, untouched by the test), and returns ns/op of both per round.
func (b *fsBench) probe(path, control string, n, rounds int) (probe, ctl []float64, err error) {
	for range rounds {
		v, err := b.multiNs(n, 500, "o:"+path, "o:"+control)
		if err != nil {
			return nil, nil, err
		}
		probe, ctl = append(probe, v[0]), append(ctl, v[1])
	}
	return probe, ctl, nil
}

// blockedMany is figure 4a: c.blocked processes blocked on one name held by
// another: the daemon's RSS growth and the open+close time of an unrelated
// name, idle and with the waiters. A fresh daemon keeps the RSS figures
// clean of the earlier parts.
func (b *fsBench) blockedMany(c fsConfig) error {
	d, err := b.startLockfs("lockfs-blocked")
	if err != nil {
		return err
	}
	defer d.stop()
	floor, err := b.startFloor("floor-control", nil)
	if err != nil {
		return err
	}
	defer floor.stop()
	other := filepath.Join(d.mnt, "other")
	control := filepath.Join(floor.mnt, "x")
	if _, _, err := b.probe(other, control, 2000, 1); err != nil { // warm-up
		return err
	}
	idle, idleCtl, err := b.probe(other, control, c.probeN, 5)
	if err != nil {
		return err
	}
	rss0, err := readMem(d.pid())
	if err != nil {
		return err
	}
	h, err := b.hold(d.mnt, "blk", 1, 30*time.Second)
	if err != nil {
		return err
	}
	holding := true
	defer func() {
		if holding {
			h.stop()
		}
	}()
	name := filepath.Join(d.mnt, "blk0")
	t0 := time.Now()
	waiters := make([]*exec.Cmd, 0, c.blocked)
	for range c.blocked {
		cmd := exec.Command(b.client, "wait", name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		if err := b.start(cmd); err != nil {
			return fmt.Errorf("waiter %d: %w", len(waiters), err)
		}
		waiters = append(waiters, cmd)
	}
	defer func() {
		for _, w := range waiters {
			_ = w.Process.Kill()
			_ = b.wait(w)
		}
	}()
	// Wait until every waiter sits in open(2).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		blocked := 0
		for _, w := range waiters {
			if inOpen(w.Process.Pid) {
				blocked++
			}
		}
		if blocked == len(waiters) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d waiters blocked in open after 2 min", blocked, len(waiters))
		}
		time.Sleep(50 * time.Millisecond)
	}
	spawn := time.Since(t0)
	time.Sleep(300 * time.Millisecond)
	rss1, err := readMem(d.pid())
	if err != nil {
		return err
	}
	busy, busyCtl, err := b.probe(other, control, c.probeN, 5)
	if err != nil {
		return err
	}
	rss2, err := readMem(d.pid())
	if err != nil {
		return err
	}
	// Release the name: the waiters take it in turn and exit.
	t1 := time.Now()
	h.stop()
	holding = false
	for i, w := range waiters {
		if err := b.waitTimeout(w, 2*time.Minute); err != nil {
			return fmt.Errorf("waiter %d after the release: %w", i, err)
		}
	}
	drain := time.Since(t1)
	settled, err := b.settleRSS(d, rss0, c.settle)
	if err != nil {
		return err
	}
	after, afterCtl, err := b.probe(other, control, c.probeN, 5)
	if err != nil {
		return err
	}
	grown := float64(rss1.rss-rss0.rss) / 1024
	// Idle is measured before the waiters come and after they leave, so
	// that a drift of the machine in between does not count.
	idleAll := append(slices.Clone(idle), after...)
	idleUs, busyUs := median(idleAll)/1000, median(busy)/1000
	ratio := busyUs / idleUs
	// The same ratio against a floor mount measured alongside in each
	// round: what the waiters cost the daemon, with the machine's own
	// variation divided out.
	rel := func(p, q []float64) []float64 {
		r := make([]float64, len(p))
		for i := range p {
			r[i] = p[i] / q[i]
		}
		return r
	}
	normalized := median(rel(busy, busyCtl)) / median(append(rel(idle, idleCtl), rel(after, afterCtl)...))
	fmt.Printf("4. %d processes blocked on one name (all in open(2) %.1f s after the first spawn):\n", c.blocked, spawn.Seconds())
	fmt.Printf("   daemon %s, %.1f KiB per waiter; after the probe below VmRSS +%.1f MiB\n",
		growth(rss0, rss1), grown*1024/float64(c.blocked), float64(rss2.rss-rss0.rss)/1024)
	fmt.Printf("   open+close of an unrelated name: idle %.1f us (before %.1f, after %.1f), with %d blocked %.1f us: %.2fx; against a floor alongside: %.2fx\n",
		idleUs, median(idle)/1000, median(after)/1000, c.blocked, busyUs, ratio, normalized)
	fmt.Printf("   released: the %d waiters took the name in turn and exited in %.2f s (%.0f us per handoff incl. process exit)\n",
		c.blocked, drain.Seconds(), drain.Seconds()*1e6/float64(c.blocked))
	fmt.Printf("   %s\n", settled)
	return nil
}

// manyNames is figure 4b: one process holds c.names names at once.
func (b *fsBench) manyNames(c fsConfig) error {
	d, err := b.startLockfs("lockfs-names")
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := b.clientNs("open", filepath.Join(d.mnt, "other"), 2000); err != nil { // warm-up
		return err
	}
	rss0, err := readMem(d.pid())
	if err != nil {
		return err
	}
	t0 := time.Now()
	h, err := b.hold(d.mnt, "n", c.names, 5*time.Minute)
	if err != nil {
		return err
	}
	took := time.Since(t0)
	time.Sleep(300 * time.Millisecond)
	rss1, err := readMem(d.pid())
	h.stop()
	if err != nil {
		return err
	}
	settled, err := b.settleRSS(d, rss0, c.settle)
	if err != nil {
		return err
	}
	grown := float64(rss1.rss-rss0.rss) / 1024
	fmt.Printf("   %d names held at once (one process, opened in %.2f s): daemon %s, %.1f KiB per name\n",
		c.names, took.Seconds(), growth(rss0, rss1), grown*1024/float64(c.names))
	fmt.Printf("   %s\n", settled)
	return nil
}
