package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockCalls is the "calls" part of 'lockfs-bench fs': lock calls
// (flock(2)) on lockfs descriptors, which the mount forwards to the daemon,
// against the open forms of lockfs and against flock on the local disk.
// It runs on a daemon of its own:
//
//	a  a bash loop of util-linux 'flock M/x true' against one of
//	   'flock /tmp/.../x true' (a flock process per iteration)
//	b  C loops of open(O_RDONLY)+flock(EX)+flock(UN)+close on M/x against
//	   open(O_WRONLY|O_CREAT|O_TRUNC)+close (the shell's 'exec 9>') on M/y,
//	   and the FUSE requests each costs
//	c  release->grant latency between two processes handing one name over
//	   with flock(2), against the same on the local disk and against
//	   lockfs's open/close handoff
func (b *fsBench) lockCalls(c fsConfig) error {
	lfs, err := b.startLockfs("lockfs-calls")
	if err != nil {
		return err
	}
	defer lfs.stop()
	local := filepath.Join(b.tmp, "calls-local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"x", "handoff"} {
		if err := os.WriteFile(filepath.Join(local, name), nil, 0o644); err != nil {
			return err
		}
	}
	fmt.Println("calls. lock calls: flock(2) on lockfs descriptors, served by the daemon")
	if err := b.callsFlock1(c, lfs, local); err != nil {
		return err
	}
	if err := b.callsLoops(c, lfs, local); err != nil {
		return err
	}
	if err := b.callsTrace(); err != nil {
		return err
	}
	return b.callsHandoff(c, lfs, local)
}

// callsFlock1 is figure a: c.bashN iterations of 'flock F true' from bash
// on lockfs and on the local disk, in c.rounds rounds alternating which
// goes first.
func (b *fsBench) callsFlock1(c fsConfig, lfs *daemon, local string) error {
	if _, err := exec.LookPath("flock"); err != nil {
		return fmt.Errorf("util-linux flock: %w", err)
	}
	paths := []string{filepath.Join(lfs.mnt, "x"), filepath.Join(local, "x")}
	// Warm up: the lookup, the page cache of flock and true.
	for _, p := range paths {
		if _, err := b.bashLoop(bashFlockLoop, p, 20); err != nil {
			return err
		}
	}
	per := make([][]float64, len(paths)) // ns per iteration, per round
	var ratios []float64
	for r := range c.rounds {
		for k := range paths {
			i := (k + r) % len(paths)
			d, err := b.bashLoop(bashFlockLoop, paths[i], c.bashN)
			if err != nil {
				return err
			}
			per[i] = append(per[i], float64(d.Nanoseconds())/float64(c.bashN))
		}
		ratios = append(ratios, per[0][r]/per[1][r])
	}
	fmt.Printf("   a. bash loop of %d 'flock F true' (util-linux flock(1), a process per iteration), %d interleaved rounds:\n",
		c.bashN, c.rounds)
	fmt.Printf("      mean time per iteration, median of the rounds (range):\n")
	fmt.Printf("      lockfs 'flock M/x true'      %6s us  (%s)\n", f0(median(per[0])/1e3), spread(per[0], 1e3, "%.0f"))
	fmt.Printf("      local  'flock /tmp/x true'   %6s us  (%s)\n", f0(median(per[1])/1e3), spread(per[1], 1e3, "%.0f"))
	fmt.Printf("      lockfs/local %.2fx  (%s)\n", median(ratios), spread(ratios, 1, "%.2f"))
	return nil
}

// callsLoops is figure b: C loops of flock(2) through a read-only
// descriptor and of the shell's write open, on one mount, c.n operations
// of each per round in alternating chunks of c.chunk, c.rounds rounds;
// with local open(O_RDONLY)+flock+flock+close in the same chunks.
func (b *fsBench) callsLoops(c fsConfig, lfs *daemon, local string) error {
	specs := []string{
		"l:" + filepath.Join(lfs.mnt, "x"),
		"t:" + filepath.Join(lfs.mnt, "y"),
		"l:" + filepath.Join(local, "x"),
	}
	ns, err := b.rounds(c, specs...)
	if err != nil {
		return err
	}
	ratios := perRound(ns, 0, 1)
	fmt.Printf("   b. C loops on one mount, %d per case per round in alternating chunks of %d, %d rounds (median, range):\n",
		c.n, c.chunk, c.rounds)
	fmt.Printf("      lockfs open(O_RDONLY)+flock(EX)+flock(UN)+close on M/x   %6.1f us/op  (%s)\n", median(ns[0])/1e3, spread(ns[0], 1e3, "%.1f"))
	fmt.Printf("      lockfs open(O_WRONLY|O_CREAT|O_TRUNC)+close on M/y       %6.1f us/op  (%s)\n", median(ns[1])/1e3, spread(ns[1], 1e3, "%.1f"))
	fmt.Printf("      local  open(O_RDONLY)+flock(EX)+flock(UN)+close          %6.2f us/op  (%s)\n", median(ns[2])/1e3, spread(ns[2], 1e3, "%.2f"))
	fmt.Printf("      flock loop / write-open loop %.2fx  (%s)\n", median(ratios), spread(ratios, 1, "%.2f"))
	return nil
}

// callsTrace counts, from go-fuse's debug trace of a daemon of its own,
// the FUSE requests per operation of figure b's two loops.
func (b *fsBench) callsTrace() error {
	d, err := b.startLockfs("lockfs-calls-trace", "--debug-fuse")
	if err != nil {
		return err
	}
	defer d.stop()
	const ops = 200
	var out []string
	for _, spec := range []string{"l:" + filepath.Join(d.mnt, "x"), "t:" + filepath.Join(d.mnt, "y")} {
		// The first open looks the name up; later ones find it cached.
		if _, err := b.multiNs(1, 1, spec); err != nil {
			return err
		}
		counts, err := d.countRequests(ops, func() error { _, err := b.multiNs(ops, ops, spec); return err })
		if err != nil {
			return err
		}
		out = append(out, counts)
	}
	fmt.Printf("      FUSE requests per op (go-fuse debug trace, %d ops): open(O_RDONLY)+flock+flock+close: %s; open(O_WRONLY|O_CREAT|O_TRUNC)+close: %s\n",
		ops, out[0], out[1])
	return nil
}

// callsHandoff is figure c: two C processes hand one name over
// c.handoffs times, through flock(2) on lockfs, through flock(2) on the
// local disk, and through open/close on lockfs (figure 3's handoff), the
// three cases interleaved in each of c.handoffRuns runs.
func (b *fsBench) callsHandoff(c fsConfig, lfs *daemon, local string) error {
	cases := []handoffCase{
		{what: "lockfs, flock(2)", mode: "fhandoff", path: filepath.Join(lfs.mnt, "handoff")},
		{what: "local,  flock(2)", mode: "fhandoff", path: filepath.Join(local, "handoff")},
		{what: "lockfs, open/close", mode: "handoff", path: filepath.Join(lfs.mnt, "handoff-open")},
	}
	if err := b.runHandoffCases(c, cases); err != nil {
		return err
	}
	fmt.Printf("   c. contended handoff, two C processes on one name, %d runs x ~%d handoffs; flock: each process opens O_RDONLY once,\n",
		c.handoffRuns, cases[0].n)
	fmt.Printf("      then loops flock(EX), hold 0.5-3 ms, flock(UN); release->grant in us, median over runs (range):\n")
	printHandoffCases("      ", 18, cases)
	fmt.Printf("      lockfs flock/local flock: %s; lockfs flock/lockfs open: %s\n",
		cases[0].ratio(cases[1], "%.1f"), cases[0].ratio(cases[2], "%.2f"))
	return nil
}

// handoffCase is one case of a handoff comparison: two clients in mode
// (handoff, fhandoff) on path, and its figures per run in ns.
type handoffCase struct {
	what, mode, path string
	p50, p99, max    []float64
	n                int // handoffs in the last run
}

// runHandoffCases runs every case in turn in each of c.handoffRuns runs,
// so that machine noise hits the cases alike, and fills in their figures.
func (b *fsBench) runHandoffCases(c fsConfig, cases []handoffCase) error {
	rounds := c.handoffs/2 + 1
	for range c.handoffRuns {
		for i := range cases {
			cs := &cases[i]
			lat, err := b.handoffPair(cs.mode, cs.path, rounds)
			if err != nil {
				return err
			}
			cs.n = len(lat)
			cs.p50 = append(cs.p50, pct(lat, 50))
			cs.p99 = append(cs.p99, pct(lat, 99))
			cs.max = append(cs.max, lat[len(lat)-1])
		}
	}
	return nil
}

// printHandoffCases prints a line per case: the median over runs of its
// p50, p99 and max in us, each with its range; names padded to width.
func printHandoffCases(indent string, width int, cases []handoffCase) {
	for _, cs := range cases {
		fmt.Printf("%s%-*s p50 %6.1f (%s)  p99 %6.1f (%s)  max %6.0f (%s)\n", indent, width, cs.what,
			median(cs.p50)/1e3, spread(cs.p50, 1e3, "%.1f"),
			median(cs.p99)/1e3, spread(cs.p99, 1e3, "%.1f"),
			median(cs.max)/1e3, spread(cs.max, 1e3, "%.0f"))
	}
}

// ratio is "p50 Rx, p99 Rx": the medians of h over those of o, each in
// format.
func (h handoffCase) ratio(o handoffCase, format string) string {
	return fmt.Sprintf("p50 "+format+"x, p99 "+format+"x",
		median(h.p50)/median(o.p50), median(h.p99)/median(o.p99))
}

// handoffPair runs two clients in mode (handoff, fhandoff) on path for
// rounds rounds each and returns the sorted release->grant latencies in ns.
func (b *fsBench) handoffPair(mode, path string, rounds int) ([]float64, error) {
	outs := make([]*bytes.Buffer, 2)
	cmds := make([]*exec.Cmd, 2)
	for i := range 2 {
		cmd := exec.Command(b.client, mode, path, strconv.Itoa(rounds), strconv.Itoa(i))
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		outs[i] = &bytes.Buffer{}
		cmd.Stdout = outs[i]
		cmd.Stderr = os.Stderr
		if err := b.start(cmd); err != nil {
			return nil, err
		}
		cmds[i] = cmd
	}
	for _, cmd := range cmds {
		if err := b.waitTimeout(cmd, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("%s client on %s: %w", mode, path, err)
		}
	}
	var events []event
	for _, out := range outs {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			t, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s client: bad line %q", mode, sc.Text())
			}
			events = append(events, event{f[0][0], t})
		}
	}
	return handoffLatencies(events)
}

// spread is "min-max" of xs divided by unit, in format.
func spread(xs []float64, unit float64, format string) string {
	return fmt.Sprintf(format+"-"+format, slices.Min(xs)/unit, slices.Max(xs)/unit)
}

// f0 formats x without decimals.
func f0(x float64) string { return strconv.FormatFloat(x, 'f', 0, 64) }
