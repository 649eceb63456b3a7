package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

const childCmd = "engine-handoff-child"

func runEngine(args []string) error {
	fs := flag.NewFlagSet("engine", flag.ExitOnError)
	n := fs.Int("n", 200000, "iterations per uncontended round")
	handoffs := fs.Int("handoffs", 1000, "handoffs between the two processes")
	names := fs.Int("names", 10000, "names held at once for the memory figure")
	dir := fs.String("dir", "", "backing directory (default: a new temp dir)")
	_ = fs.Parse(args)
	if *dir == "" {
		d, err := os.MkdirTemp("", "lockfs-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	if err := benchUncontended(*dir, *n); err != nil {
		return err
	}
	if err := benchHandoff(*dir, *handoffs); err != nil {
		return err
	}
	return benchManyNames(*dir, *names)
}

func benchUncontended(dir string, n int) error {
	be, err := dirlock.Open(filepath.Join(dir, "engine"), dirlock.Options{})
	if err != nil {
		return err
	}
	q := lockengine.NewQueue(be, lockengine.QueueOptions{})
	defer q.Close()
	ctx := context.Background()
	barePath := filepath.Join(dir, "bare")
	bare := func() error {
		for range n {
			fd, err := unix.Open(barePath, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return err
			}
			if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
				return err
			}
			if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
				return err
			}
			unix.Close(fd)
		}
		return nil
	}
	engine := func() error {
		for range n {
			l, err := q.Acquire(ctx, "x", lockengine.Exclusive)
			if err != nil {
				return err
			}
			if err := l.Release(); err != nil {
				return err
			}
		}
		return nil
	}
	// Interleave rounds so both see the same machine state; report medians.
	var bareNs, engNs []float64
	for range 5 {
		for _, c := range []struct {
			f   func() error
			out *[]float64
		}{{bare, &bareNs}, {engine, &engNs}} {
			start := time.Now()
			if err := c.f(); err != nil {
				return err
			}
			*c.out = append(*c.out, float64(time.Since(start).Nanoseconds())/float64(n))
		}
	}
	b, e := median(bareNs), median(engNs)
	fmt.Printf("uncontended: bare open+flock(EX)+flock(UN)+close %.2f us/op, engine Acquire+Release (exclusive) %.2f us/op, ratio %.2fx\n",
		b/1000, e/1000, e/b)
	return nil
}

// benchHandoff runs two child processes that pass one name back and forth;
// each handoff is timed from just before Release in one process to just
// after Acquire returns in the other (CLOCK_MONOTONIC is shared).
func benchHandoff(dir string, handoffs int) error {
	state := filepath.Join(dir, "handoff")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	type child struct {
		cmd *exec.Cmd
		out *bufio.Scanner
	}
	var kids []child
	for i := range 2 {
		cmd := exec.Command(self, childCmd, state, strconv.Itoa(handoffs/2+1), strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		kids = append(kids, child{cmd, bufio.NewScanner(stdout)})
	}
	var events []event
	for _, k := range kids {
		for k.out.Scan() {
			f := strings.Fields(k.out.Text())
			if len(f) != 2 {
				continue
			}
			t, _ := strconv.ParseInt(f[1], 10, 64)
			events = append(events, event{f[0][0], t})
		}
		if err := k.cmd.Wait(); err != nil {
			return fmt.Errorf("handoff child: %w", err)
		}
	}
	lat, err := handoffLatencies(events)
	if err != nil {
		return err
	}
	fmt.Printf("handoff between two processes (%d handoffs): p50 %.0f us, p99 %.0f us, max %.0f us\n",
		len(lat), pct(lat, 50)/1000, pct(lat, 99)/1000, lat[len(lat)-1]/1000)
	return nil
}

func runHandoffChild(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("%s: want STATE ROUNDS ID", childCmd)
	}
	rounds, _ := strconv.Atoi(args[1])
	id, _ := strconv.Atoi(args[2])
	be, err := dirlock.Open(args[0], dirlock.Options{})
	if err != nil {
		return err
	}
	q := lockengine.NewQueue(be, lockengine.QueueOptions{})
	defer q.Close()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	ctx := context.Background()
	for i := range rounds {
		l, err := q.Acquire(ctx, "handoff", lockengine.Exclusive)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "G %d\n", monoNow())
		// Hold long enough for the other process to be waiting.
		time.Sleep(time.Duration(500+((i*7919+id*104729)%2500)) * time.Microsecond)
		fmt.Fprintf(w, "R %d\n", monoNow())
		if err := l.Release(); err != nil {
			return err
		}
		// Let the other process take it before we ask again.
		time.Sleep(200 * time.Microsecond)
	}
	return nil
}

// event is a timestamped line of a handoff client: 'R' just before a
// release, 'G' just after a grant (CLOCK_MONOTONIC ns, shared by all
// processes on the machine).
type event struct {
	kind byte
	t    int64
}

// handoffLatencies pairs each grant with the release right before it (by
// the other process) and returns the sorted latencies in ns.
func handoffLatencies(events []event) ([]float64, error) {
	slices.SortFunc(events, func(a, b event) int { return cmp.Compare(a.t, b.t) })
	var lat []float64
	for i := 1; i < len(events); i++ {
		if events[i].kind == 'G' && events[i-1].kind == 'R' {
			lat = append(lat, float64(events[i].t-events[i-1].t))
		}
	}
	if len(lat) == 0 {
		return nil, errors.New("handoff: no handoffs observed")
	}
	slices.Sort(lat)
	return lat, nil
}

func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// benchManyNames holds n names at once and reports the memory and
// descriptors they cost.
func benchManyNames(dir string, n int) error {
	be, err := dirlock.Open(filepath.Join(dir, "many"), dirlock.Options{})
	if err != nil {
		return err
	}
	q := lockengine.NewQueue(be, lockengine.QueueOptions{})
	defer q.Close()
	ctx := context.Background()
	before := heapInUse()
	fdsBefore := countFds()
	leases := make([]*lockengine.Lease, 0, n)
	for i := range n {
		l, err := q.Acquire(ctx, "name-"+strconv.Itoa(i), lockengine.Exclusive)
		if err != nil {
			return fmt.Errorf("after %d names: %w", i, err)
		}
		leases = append(leases, l)
	}
	after := heapInUse()
	fds := countFds() - fdsBefore
	fmt.Printf("%d names held at once: %.0f bytes of heap per name, %.2f descriptors per name\n",
		n, float64(after-before)/float64(n), float64(fds)/float64(n))
	for _, l := range leases {
		_ = l.Release()
	}
	runtime.KeepAlive(leases)
	return nil
}

func heapInUse() uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

func countFds() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(sorted []float64, p int) float64 {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}
