package main

// The soak checker. It reads only the client logs and the parent's record
// of the faults it injected, never lockfs's own state.
//
// An interval is one grant: [ENTER, end] on one name, exclusive or shared.
// ENTER is taken just after open/flock/fcntl returned and EXIT just before
// the read that verifies the hold, so an interval is inside the real hold
// (see soak_client.go). end is:
//   - the EXIT time;
//   - for a client SIGKILLed by the chaos loop while holding (its log
//     ends in ENTER), the time taken just before the SIGKILL, or the ENTER
//     if that is later: the client was alive then, and the kernel releases
//     its descriptors only at its death. A kill is matched to its client
//     by the client's log file, which is unique to one process; a pid is
//     not (pid_max is 32768 on many hosts, and an hour's soak starts more
//     processes than that), and the client may log a new attempt between
//     the moment the chaos loop chose it and its death;
//   - for a client whose log ends in ENTER without being killed (it was
//     still holding at the end), the end of the run.
//
// An interval is faulted when its client logged LOST for it (the
// verification read failed: broken, lost, or its daemon died), or when
// the daemon of its mount was SIGKILLed between ENTER and end; then end is
// cut to the kill time (the daemon's death released its hold in the state
// dir). A client SIGKILLed while holding is not faulted: its interval just
// ends at the kill.
//
// Checks, per name:
//   - overlap: two intervals that overlap with at least one exclusive are a
//     violation unless the earlier one (by ENTER) is faulted AND the later
//     one's token is greater than the earlier one's: a broken or lost
//     holder keeps running until it notices, and fencing tokens are what
//     tells the protected resource which holder is current;
//   - tokens: ordered by ENTER, exclusive grants have strictly increasing
//     tokens;
//   - every ENTER token parses (else the client logged VIOL).
//   - ENOENT: a failed attempt on a mountpoint that had no daemon, between
//     a SIGKILL of its daemon (or the final stop) and the restart, is
//     documented; an attempt that ENOENT ended is a violation unless
//     [BEGIN, FAIL] meets such a window of its own mount in the parent's
//     record.
// Client VIOL lines (undocumented errnos, bad tokens) are violations.

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

type soakInterval struct {
	name, mode, iface string
	token             uint64
	enter, end        int64
	mount, pid        int
	lost              bool // logged LOST
	daemonKilled      bool // its daemon was SIGKILLed while it held
	clientKilled      bool
	log               string
}

func (iv *soakInterval) faulted() bool { return iv.lost || iv.daemonKilled }

func (iv *soakInterval) String() string {
	var f []string
	if iv.lost {
		f = append(f, "LOST")
	}
	if iv.daemonKilled {
		f = append(f, "daemon-killed")
	}
	if iv.clientKilled {
		f = append(f, "client-killed")
	}
	return fmt.Sprintf("%s %s token %d pid %d via %s on d%d [%d, %d] %s (%s)",
		iv.name, iv.mode, iv.token, iv.pid, iv.iface, iv.mount, iv.enter, iv.end, strings.Join(f, ","), iv.log)
}

type soakReport struct {
	grants       map[string]int // by interface
	lost         map[string]int // LOST by errno
	errnos       map[string]int // FAIL by errno
	attempts     int
	waits        []time.Duration // blocking interfaces, BEGIN to grant
	violations   []string
	overlapsOK   int // overlaps after a fault, fenced by a greater token
	blockedAtEnd int
	stuck        int
	finalFails   map[string]int // errnos of the final waiters
	// attempts (BEGIN) with no outcome: of clients the chaos SIGKILLed,
	// and of the others (a violation)
	unfinishedKilled, unfinished int
	intervals                    int
}

func (rep *soakReport) addViolation(s string) { rep.violations = append(rep.violations, s) }

// soakWindow is a span [from, to] in which a mountpoint had no daemon.
type soakWindow struct{ from, to int64 }

// downWindows returns, per mount slot, the spans from a daemon's SIGKILL or
// stop to its next start (to the end of time when it did not start again).
func downWindows(events []soakEvent) map[int][]soakWindow {
	evs := slices.Clone(events)
	slices.SortStableFunc(evs, func(a, b soakEvent) int { return cmp.Compare(a.t, b.t) })
	down := map[int]int64{} // slot -> start of its open window
	out := map[int][]soakWindow{}
	for _, e := range evs {
		switch e.kind {
		case "daemon-kill", "daemon-stop":
			if _, ok := down[e.slot]; !ok {
				down[e.slot] = e.t
			}
		case "daemon-up":
			if from, ok := down[e.slot]; ok {
				out[e.slot] = append(out[e.slot], soakWindow{from, e.t})
				delete(down, e.slot)
			}
		}
	}
	for slot, from := range down {
		out[slot] = append(out[slot], soakWindow{from, math.MaxInt64})
	}
	return out
}

func checkSoak(logs []string, events []soakEvent, startMono, endMono int64) *soakReport {
	rep := &soakReport{grants: map[string]int{}, lost: map[string]int{}, errnos: map[string]int{}, finalFails: map[string]int{}}
	kills := map[string]soakEvent{} // client kills by log file
	exits := map[string]soakEvent{} // clients' failed exits by log file
	daemonKills := map[int][]int64{}
	for _, e := range events {
		switch e.kind {
		case "client-kill":
			kills[e.log] = e
		case "client-exit":
			exits[e.log] = e
		case "daemon-kill":
			daemonKills[e.slot] = append(daemonKills[e.slot], e.t)
		}
	}
	windows := downWindows(events)
	mountDown := func(slot int, from, to int64) bool {
		for _, w := range windows[slot] {
			if w.from <= to && w.to >= from {
				return true
			}
		}
		return false
	}
	byName := map[string][]*soakInterval{}
	blocking := map[string]bool{}
	for _, ifc := range soakIfaces {
		blocking[ifc.name] = ifc.blocking
	}
	for _, path := range logs {
		f, err := os.Open(path)
		if err != nil {
			rep.addViolation("read log: " + err.Error())
			continue
		}
		var cur *soakInterval
		var begin int64
		open := false // a BEGIN without its ENTER/FAIL/VIOL
		var beginIface string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			w := strings.Fields(line)
			if len(w) == 0 {
				continue
			}
			bad := func() { rep.addViolation(fmt.Sprintf("%s: malformed line %q", path, line)) }
			switch w[0] {
			case "BEGIN":
				if len(w) < 5 {
					bad()
					continue
				}
				rep.attempts++
				open = true
				begin, _ = strconv.ParseInt(w[3], 10, 64)
				beginIface = w[2]
			case "ENTER":
				if len(w) < 8 {
					bad()
					continue
				}
				open = false
				iv := &soakInterval{name: w[1], mode: w[2], iface: w[6], log: path}
				iv.token, _ = strconv.ParseUint(w[3], 10, 64)
				iv.enter, _ = strconv.ParseInt(w[4], 10, 64)
				iv.pid, _ = strconv.Atoi(w[5])
				iv.mount, _ = strconv.Atoi(w[7])
				iv.end = math.MaxInt64
				cur = iv
				byName[iv.name] = append(byName[iv.name], iv)
				rep.grants[iv.iface]++
				if blocking[beginIface] {
					rep.waits = append(rep.waits, time.Duration(iv.enter-begin))
				}
			case "LOST":
				if cur != nil {
					cur.lost = true
				}
				if len(w) >= 6 {
					rep.lost[w[5]]++
				}
			case "EXIT":
				if cur != nil && len(w) >= 5 {
					cur.end, _ = strconv.ParseInt(w[4], 10, 64)
				}
				cur = nil
			case "FAIL":
				if len(w) < 5 {
					bad()
					continue
				}
				open = false
				errno := w[2]
				if errno == "ENOENT" {
					t, _ := strconv.ParseInt(w[3], 10, 64)
					mi, _ := strconv.Atoi(w[4])
					if !mountDown(mi, begin, t) {
						rep.addViolation(fmt.Sprintf("%s: %s: ENOENT from d%d, which was not down during the attempt [%d, %d]",
							path, line, mi, begin, t))
					}
					errno = "ENOENT (daemon down)"
				}
				if w[1] == "final" {
					rep.finalFails[errno]++
				}
				rep.errnos[errno]++
			case "VIOL":
				open = false
				rep.addViolation(path + ": " + line)
			default:
				bad()
			}
		}
		_ = f.Close()
		kill, killed := kills[path]
		if open {
			if killed {
				rep.unfinishedKilled++
			} else {
				rep.unfinished++
				why := "the client exited normally"
				if e, ok := exits[path]; ok {
					why = fmt.Sprintf("pid %d exited: %s", e.pid, e.name)
				}
				rep.addViolation(fmt.Sprintf("%s: the last attempt has no outcome (no grant, no errno; %s)", path, why))
			}
		}
		if e, ok := exits[path]; ok && !killed {
			rep.addViolation(fmt.Sprintf("%s: client pid %d exited before the end, not killed by the chaos loop: %s", path, e.pid, e.name))
		}
		if cur != nil {
			if killed {
				cur.end = max(kill.t, cur.enter)
				cur.clientKilled = true
			} else {
				cur.end = endMono
			}
		}
	}
	for _, ivs := range byName {
		for _, iv := range ivs {
			rep.intervals++
			for _, k := range daemonKills[iv.mount] {
				if k >= iv.enter && k <= iv.end {
					iv.daemonKilled = true
					iv.end = k
					break
				}
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ivs := byName[n]
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].enter < ivs[j].enter })
		// Overlaps: each interval against the earlier ones still open.
		var open []*soakInterval
		for _, b := range ivs {
			keep := open[:0]
			for _, a := range open {
				if a.end > b.enter {
					keep = append(keep, a)
				}
			}
			open = keep
			for _, a := range open {
				if a.mode == "sh" && b.mode == "sh" {
					continue
				}
				if a.faulted() && b.token > a.token {
					rep.overlapsOK++
					continue
				}
				rep.addViolation(fmt.Sprintf("overlap on %s:\n      earlier %v\n      later   %v", n, a, b))
			}
			open = append(open, b)
		}
		// Tokens of exclusive grants, in ENTER order.
		var prev *soakInterval
		for _, b := range ivs {
			if b.mode != "ex" {
				continue
			}
			if prev != nil && b.token <= prev.token {
				rep.addViolation(fmt.Sprintf("token not increasing on %s:\n      earlier %v\n      later   %v", n, prev, b))
			}
			prev = b
		}
	}
	return rep
}

func (r *soakRun) print(rep *soakReport, elapsed time.Duration, lockFiles int, lockNames []string) {
	fmt.Printf("\nduration: %v (clients ran %v)\n", elapsed.Round(time.Millisecond), r.c.duration)
	total := 0
	for _, n := range rep.grants {
		total += n
	}
	fmt.Printf("operations: %d attempts, %d grants (%s)\n", rep.attempts, total, fmtCounts(rep.grants))
	fmt.Printf("leases lost (verification read failed): %s\n", fmtCounts(rep.lost))
	nf := 0
	for _, n := range r.faults {
		nf += n
	}
	fmt.Printf("faults injected: %d (%s)\n", nf, fmtCounts(r.faults))
	if len(r.restarts) > 0 || len(r.startFailures) > 0 {
		fmt.Printf("daemon restarts: %d, slowest %v; failed start attempts (retried): %d\n",
			len(r.restarts), slices.Max(append([]time.Duration{0}, r.restarts...)).Round(time.Millisecond), len(r.startFailures))
		for _, f := range r.startFailures {
			fmt.Printf("  failed start: %s\n", strings.ReplaceAll(f, "\n", "\n    "))
		}
	}
	fmt.Printf("failed attempts by errno: %s\n", fmtCounts(rep.errnos))
	fmt.Printf("overlaps after a fault fenced by a greater token: %d\n", rep.overlapsOK)
	fmt.Printf("clients still running 2s after the duration: %d (then unblocked by stopping the daemons); still running 10s after that (stuck): %d\n",
		rep.blockedAtEnd, rep.stuck)
	fmt.Printf("final waiters (blocked on n00, held by the soak, at the shutdown): %d grants, ended by errno: %s\n",
		rep.grants["final"], fmtCounts(rep.finalFails))
	fmt.Printf("attempts without an outcome: %d of clients SIGKILLed by the chaos loop, %d of others (violations)\n",
		rep.unfinishedKilled, rep.unfinished)
	if len(rep.waits) > 0 {
		w := rep.waits
		sort.Slice(w, func(i, j int) bool { return w[i] < w[j] })
		q := func(p float64) time.Duration { return w[min(len(w)-1, int(p*float64(len(w))))] }
		fmt.Printf("wait (blocking interfaces, attempt to grant): p50 %v p99 %v max %v (%d grants)\n",
			q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), w[len(w)-1].Round(time.Microsecond), len(w))
	}
	// Daemon incarnations, longest-sampled first.
	type inc struct {
		d *daemon
		s []soakSample
	}
	var incs []inc
	r.mu.Lock()
	for d, s := range r.samples {
		incs = append(incs, inc{d, s})
	}
	r.mu.Unlock()
	sort.Slice(incs, func(i, j int) bool { return len(incs[i].s) > len(incs[j].s) })
	fmt.Printf("daemon RSS and descriptors (%d daemon processes sampled; the %d longest-lived):\n", len(incs), min(len(incs), 4))
	for _, in := range incs[:min(len(incs), 4)] {
		s := in.s
		if len(s) < 2 {
			continue
		}
		var xs, rss, fds []float64
		for _, p := range s {
			xs = append(xs, p.t.Minutes())
			rss = append(rss, float64(p.rssKiB)/1024)
			fds = append(fds, float64(p.fds))
		}
		fmt.Printf("  %s pid %d, %d samples over %v: RSS %.1f -> %.1f MiB (slope %+.2f MiB/min), fds %d -> %d (slope %+.1f/min)\n",
			in.d.name, in.d.proc.Pid(), len(s), (s[len(s)-1].t - s[0].t).Round(time.Second),
			rss[0], rss[len(rss)-1], slope(xs, rss), s[0].fds, s[len(s)-1].fds, slope(xs, fds))
	}
	if r.c.etcd {
		fmt.Printf("request keys left in etcd after the daemons stopped: %d\n", lockFiles)
	} else {
		fmt.Printf("files in STATE/locks at the end: %d (names used: %d)\n", lockFiles, r.c.names)
	}
	fmt.Println("rules: an interval is [grant, release] of one lease; it ends early at the SIGKILL of its client, or at the SIGKILL of its daemon")
	fmt.Println("       (then it is faulted); it is faulted too when the client's verification read failed (LOST). An overlap with an")
	fmt.Println("       exclusive interval is allowed only after a faulted one and only with a greater token; exclusive tokens strictly increase.")
	fmt.Println("       ENOENT is allowed only from a mount whose daemon was down (killed, not yet restarted, or stopped) during the attempt.")
	fmt.Printf("violations: %d\n", len(rep.violations))
	for i, v := range rep.violations {
		if i == 10 {
			fmt.Printf("  ... %d more\n", len(rep.violations)-10)
			break
		}
		fmt.Println("  " + v)
	}
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

func fmtCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
