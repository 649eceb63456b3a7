package main

import (
	"bufio"
	"bytes"
	"cmp"
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

// crossDaemons is the "cross" part of 'lockfs-bench fs': handoff between
// two lockfs daemons on one state directory (containers sharing a volume),
// with clients on both mounts taking one name in turn. Each run measures,
// interleaved:
//
//	cross  two daemons A and B, c.crossClients clients on each mount
//	one    one daemon, 2*c.crossClients clients on its mount
//	local  2*c.crossClients clients flocking one file on the local disk
//	base   (with -base-lockfs) two daemons of another lockfs binary
//
// Each client loops open (or flock), hold 0.5-3 ms, close (or unlock),
// 200 us pause (the 'handoff' and 'fhandoff' modes of the C client). A
// handoff is a grant to one client right after another client's release;
// it is "cross" when the two clients use different daemons. The grant
// share is the fraction of the grants, until the first client is done, that
// went to daemon A's clients.
func (b *fsBench) crossDaemons(c fsConfig) error {
	state := filepath.Join(b.tmp, "cross-state")
	a, err := b.startLockfsBin(b.lockfs, "lockfs-cross-a", state)
	if err != nil {
		return err
	}
	defer a.stop()
	bd, err := b.startLockfsBin(b.lockfs, "lockfs-cross-b", state)
	if err != nil {
		return err
	}
	defer bd.stop()
	local := filepath.Join(b.tmp, "cross-local")
	if err := os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(local, "cross"), nil, 0o644); err != nil {
		return err
	}
	var base [2]*daemon
	if c.baseLockfs != "" {
		bstate := filepath.Join(b.tmp, "cross-base-state")
		for i, name := range []string{"base-cross-a", "base-cross-b"} {
			if base[i], err = b.startLockfsBin(c.baseLockfs, name, bstate); err != nil {
				return err
			}
			defer base[i].stop()
		}
	}
	k := c.crossClients
	rounds := max(c.handoffs/(2*k), 10)
	type series struct {
		what                         string
		mode                         string
		paths                        []string // one per client
		daemonOf                     []int    // daemon index of each client
		crossP50, crossP99, crossMax []float64
		sameP50, sameP99             []float64
		shareA                       []float64
	}
	clients := func(mnts ...string) ([]string, []int) {
		var paths []string
		var of []int
		for i := range 2 * k {
			d := i % len(mnts)
			paths = append(paths, filepath.Join(mnts[d], "cross"))
			of = append(of, d)
		}
		return paths, of
	}
	cases := []*series{{what: "lockfs, two daemons", mode: "handoff"}, {what: "lockfs, one daemon", mode: "handoff"},
		{what: "local flock(2)", mode: "fhandoff"}}
	cases[0].paths, cases[0].daemonOf = clients(a.mnt, bd.mnt)
	cases[1].paths, cases[1].daemonOf = clients(a.mnt)
	cases[2].paths, cases[2].daemonOf = clients(local)
	if base[0] != nil {
		s := &series{what: "base lockfs, two daemons", mode: "handoff"}
		s.paths, s.daemonOf = clients(base[0].mnt, base[1].mnt)
		cases = append(cases, s)
	}
	for run := range c.handoffRuns {
		for j := range cases {
			s := cases[(j+run)%len(cases)]
			evs, err := b.handoffClients(s.mode, s.paths, s.daemonOf, rounds)
			if err != nil {
				return fmt.Errorf("%s: %w", s.what, err)
			}
			cross, same, grantsA, grants := classifyHandoffs(evs)
			if len(cross) > 0 {
				s.crossP50 = append(s.crossP50, pct(cross, 50))
				s.crossP99 = append(s.crossP99, pct(cross, 99))
				s.crossMax = append(s.crossMax, cross[len(cross)-1])
			}
			if len(same) > 0 {
				s.sameP50 = append(s.sameP50, pct(same, 50))
				s.sameP99 = append(s.sameP99, pct(same, 99))
			}
			s.shareA = append(s.shareA, float64(grantsA)/float64(grants))
		}
	}
	us := func(xs []float64, f string) string {
		if len(xs) == 0 {
			return "-"
		}
		return fmt.Sprintf(f+" (%s)", median(xs)/1e3, spread(xs, 1e3, f))
	}
	fmt.Printf("cross. handoff between daemons on one state directory: %d clients per mount, each looping open, hold 0.5-3 ms,\n", k)
	fmt.Printf("   close, 200 us pause; %d runs x %d rounds per client; release->grant in us, median over runs (range):\n",
		c.handoffRuns, rounds)
	for _, s := range cases {
		line := fmt.Sprintf("   %-26s", s.what)
		if slices.Max(s.daemonOf) == 0 { // one daemon (or none): no handoffs between daemons
			line += fmt.Sprintf(" handoff p50 %s  p99 %s", us(s.sameP50, "%.0f"), us(s.sameP99, "%.0f"))
		} else {
			line += fmt.Sprintf(" between daemons p50 %s  p99 %s  max %s;  within a daemon p50 %s  p99 %s;  daemon A's share of grants %s",
				us(s.crossP50, "%.0f"), us(s.crossP99, "%.0f"), us(s.crossMax, "%.0f"),
				us(s.sameP50, "%.0f"), us(s.sameP99, "%.0f"), pctList(s.shareA))
		}
		fmt.Println(line)
	}
	return nil
}

// pctList formats fractions as percentages.
func pctList(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.0f%%", 100*x))
	}
	return strings.Join(parts, " ")
}

// crossEvent is a G (grant) or R (release) line of a client, with the
// client and the daemon it used.
type crossEvent struct {
	kind           byte
	t              int64
	client, daemon int
}

// handoffClients runs one client per path in mode (handoff, fhandoff),
// rounds rounds each, and returns their events sorted by time.
func (b *fsBench) handoffClients(mode string, paths []string, daemonOf []int, rounds int) ([]crossEvent, error) {
	outs := make([]*bytes.Buffer, len(paths))
	cmds := make([]*exec.Cmd, len(paths))
	for i, p := range paths {
		cmd := exec.Command(b.client, mode, p, strconv.Itoa(rounds), strconv.Itoa(i))
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
		if err := b.waitTimeout(cmd, 5*time.Minute); err != nil {
			return nil, fmt.Errorf("%s client: %w", mode, err)
		}
	}
	var evs []crossEvent
	for i, out := range outs {
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
			evs = append(evs, crossEvent{f[0][0], t, i, daemonOf[i]})
		}
	}
	slices.SortFunc(evs, func(x, y crossEvent) int { return cmp.Compare(x.t, y.t) })
	return evs, nil
}

// classifyHandoffs pairs each grant with the release right before it by
// another client and returns the sorted latencies (ns) of handoffs between
// daemons and within one daemon, and, while every client still runs (each
// does a fixed number of rounds, so a daemon whose clients were starved
// catches up alone at the end), the grants to daemon 0's clients and all
// grants.
func classifyHandoffs(evs []crossEvent) (cross, same []float64, grantsA, grants int) {
	last := map[int]int64{}
	for _, e := range evs {
		last[e.client] = e.t
	}
	cutoff := int64(1<<63 - 1)
	for _, t := range last {
		cutoff = min(cutoff, t)
	}
	for i, e := range evs {
		if e.kind != 'G' {
			continue
		}
		if e.t <= cutoff {
			grants++
			if e.daemon == 0 {
				grantsA++
			}
		}
		if i == 0 || evs[i-1].kind != 'R' || evs[i-1].client == e.client {
			continue
		}
		lat := float64(e.t - evs[i-1].t)
		if evs[i-1].daemon != e.daemon {
			cross = append(cross, lat)
		} else {
			same = append(same, lat)
		}
	}
	slices.Sort(cross)
	slices.Sort(same)
	return cross, same, grantsA, grants
}
