package dirlock

// Multi-process torture and SIGKILL handoff tests: several processes, each
// with its own Backend and Queue on one backing directory, hammer one
// name, and the test checks from outside that the locks really excluded
// each other.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

// Files of the torture work directory. Only exclusive holders write
// counter and token; shared holders append one byte each to shared.
const (
	tortureCounter = "counter"   // decimal count of exclusive sections (non-atomic read-modify-write)
	tortureToken   = "token"     // token of the last exclusive section
	tortureShared  = "shared"    // one byte per shared section (O_APPEND)
	tortureExMark  = "exclusive" // exists while an exclusive holder is inside (O_EXCL)
	tortureShDir   = "sh"        // one file per shared holder inside
)

// tortureResult is what a torture helper reports on its last stdout line,
// after "RESULT ".
type tortureResult struct {
	Exclusive  int // exclusive sections completed
	Shared     int // shared sections completed
	Cancelled  int // acquisitions that ended by their deadline (retried)
	Tries      int // acquisitions that went through TryAcquire first
	Swept      int // lock files removed by this process's sweeper
	Violations []string
}

// tortureChild runs Goroutines workers that each complete Iterations
// locked sections on Name, then prints "RESULT {json}". It exits 3 if any
// violation was seen.
func tortureChild(a helperArgs) int {
	eof := stdinEOF()
	ctx, cancel := context.WithTimeout(context.Background(), a.Deadline)
	defer cancel()
	go func() {
		<-eof
		cancel()
	}()

	var (
		mu  sync.Mutex
		res tortureResult
	)
	violate := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(res.Violations) < 10 {
			res.Violations = append(res.Violations, fmt.Sprintf("pid %d: ", os.Getpid())+fmt.Sprintf(format, args...))
		}
	}
	opts := Options{Heartbeat: 50 * time.Millisecond, TakeoverAfter: a.TakeoverAfter, SweepInterval: -1}
	if a.Sweep {
		opts.IdleTTL = time.Nanosecond
	}
	var (
		backends []*Backend
		queues   []*lockengine.Queue
	)
	open := func() *lockengine.Queue {
		b, err := Open(a.Dir, opts)
		if err != nil {
			violate("open: %v", err)
			return nil
		}
		q := lockengine.NewQueue(b, lockengine.QueueOptions{})
		backends = append(backends, b)
		queues = append(queues, q)
		return q
	}
	shared := open()
	if shared == nil {
		return tortureReport(&res)
	}

	var wg sync.WaitGroup
	for g := range a.Goroutines {
		q := shared
		if a.PerGoroutine && g > 0 {
			if q = open(); q == nil {
				break
			}
		}
		w := &tortureWorker{
			a: a, q: q, g: g, violate: violate,
			rng: rand.New(rand.NewPCG(a.Seed, uint64(g))),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
			mu.Lock()
			res.Exclusive += w.exclusive
			res.Shared += w.shared
			res.Cancelled += w.cancelled
			res.Tries += w.tries
			mu.Unlock()
		}()
	}
	var sweeping sync.WaitGroup
	stopSweep := make(chan struct{})
	if a.Sweep {
		sweeping.Add(1)
		go func() {
			defer sweeping.Done()
			for {
				select {
				case <-stopSweep:
					return
				default:
				}
				n := backends[0].Sweep()
				mu.Lock()
				res.Swept += n
				mu.Unlock()
				time.Sleep(200 * time.Microsecond) // pacing, not synchronisation
			}
		}()
	}
	wg.Wait()
	close(stopSweep)
	sweeping.Wait()
	for _, q := range queues {
		if err := q.Close(); err != nil {
			violate("close: %v", err)
		}
	}
	return tortureReport(&res)
}

func tortureReport(res *tortureResult) int {
	raw, err := json.Marshal(res)
	if err != nil {
		panic(err)
	}
	say("RESULT %s", raw)
	if len(res.Violations) > 0 {
		return 3
	}
	return 0
}

type tortureWorker struct {
	a       helperArgs
	q       *lockengine.Queue
	g       int
	rng     *rand.Rand
	violate func(format string, args ...any)

	exclusive, shared, cancelled, tries int
}

func (w *tortureWorker) path(name string) string { return filepath.Join(w.a.Work, name) }

func (w *tortureWorker) run(ctx context.Context) {
	for done := 0; done < w.a.Iterations; {
		mode := lockengine.Shared
		if w.rng.IntN(2) == 0 {
			mode = lockengine.Exclusive
		}
		var (
			l   *lockengine.Lease
			err error
		)
		switch r := w.rng.IntN(10); {
		case r == 0:
			// Try first, wait only if that would block.
			w.tries++
			l, err = w.q.TryAcquire(ctx, w.a.Name, mode)
			if errors.Is(err, lockengine.ErrWouldBlock) {
				l, err = w.q.Acquire(ctx, w.a.Name, mode)
			}
		case r == 1:
			// A deadline that may end the wait or race with the grant:
			// a grant that loses the race must be undone, not leaked.
			cctx, cancel := context.WithTimeout(ctx, time.Duration(w.rng.IntN(3000))*time.Microsecond)
			l, err = w.q.Acquire(cctx, w.a.Name, mode)
			cancel()
			if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				w.cancelled++
				continue
			}
		default:
			l, err = w.q.Acquire(ctx, w.a.Name, mode)
		}
		if err != nil {
			w.violate("goroutine %d: acquire %v after %d sections: %v", w.g, mode, done, err)
			return
		}
		if mode == lockengine.Exclusive {
			w.exclusiveSection(l)
			w.exclusive++
		} else {
			w.sharedSection(l)
			w.shared++
		}
		if err := l.Err(); err != nil {
			w.violate("goroutine %d: lease ended inside the section: %v", w.g, err)
		}
		if err := l.Release(); err != nil {
			w.violate("goroutine %d: release: %v", w.g, err)
		}
		done++
	}
}

func (w *tortureWorker) exclusiveSection(l *lockengine.Lease) {
	fd, err := unix.Open(w.path(tortureExMark), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	mine := err == nil
	switch {
	case err == unix.EEXIST:
		w.violate("goroutine %d: two exclusive holders: the exclusive marker exists", w.g)
	case err != nil:
		w.violate("goroutine %d: create exclusive marker: %v", w.g, err)
	default:
		_ = unix.Close(fd)
	}
	if names, err := os.ReadDir(w.path(tortureShDir)); err != nil {
		w.violate("goroutine %d: read shared markers: %v", w.g, err)
	} else if len(names) > 0 {
		w.violate("goroutine %d: exclusive holder while %d shared holders are inside (%s)", w.g, len(names), names[0].Name())
	}

	raw, err := os.ReadFile(w.path(tortureCounter))
	n, perr := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || perr != nil {
		w.violate("goroutine %d: read counter %q: %v %v", w.g, raw, err, perr)
	}
	gosched(w.rng)
	if err := os.WriteFile(w.path(tortureCounter), []byte(strconv.Itoa(n+1)), 0o644); err != nil {
		w.violate("goroutine %d: write counter: %v", w.g, err)
	}

	last := w.lastToken()
	if l.Token() <= last {
		w.violate("goroutine %d: exclusive token %d not above the last exclusive token %d", w.g, l.Token(), last)
	}
	if err := os.WriteFile(w.path(tortureToken), []byte(strconv.FormatUint(l.Token(), 10)), 0o644); err != nil {
		w.violate("goroutine %d: write token: %v", w.g, err)
	}
	gosched(w.rng)

	if mine {
		if err := os.Remove(w.path(tortureExMark)); err != nil {
			w.violate("goroutine %d: remove exclusive marker: %v", w.g, err)
		}
	}
}

func (w *tortureWorker) sharedSection(l *lockengine.Lease) {
	mark := filepath.Join(w.path(tortureShDir), fmt.Sprintf("%d-%d", os.Getpid(), w.g))
	fd, err := unix.Open(mark, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		w.violate("goroutine %d: create shared marker: %v", w.g, err)
	} else {
		_ = unix.Close(fd)
	}
	if _, err := os.Lstat(w.path(tortureExMark)); err == nil {
		w.violate("goroutine %d: shared holder while an exclusive holder is inside", w.g)
	}
	before, _ := os.ReadFile(w.path(tortureCounter))
	// Not equal: an exclusive grant undone because its Acquire was
	// cancelled also takes a token, without a section to record it.
	if last := w.lastToken(); l.Token() < last {
		w.violate("goroutine %d: shared token %d below the last exclusive token %d", w.g, l.Token(), last)
	}
	gosched(w.rng)
	after, _ := os.ReadFile(w.path(tortureCounter))
	if string(before) != string(after) {
		w.violate("goroutine %d: counter changed under a shared lock: %q -> %q", w.g, before, after)
	}
	f, err := os.OpenFile(w.path(tortureShared), os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err == nil {
		_, err = f.Write([]byte{'s'})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		w.violate("goroutine %d: count shared section: %v", w.g, err)
	}
	if err := os.Remove(mark); err != nil {
		w.violate("goroutine %d: remove shared marker: %v", w.g, err)
	}
}

// lastToken reads the token of the last exclusive section (0 before any).
func (w *tortureWorker) lastToken() uint64 {
	raw, err := os.ReadFile(w.path(tortureToken))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	n, perr := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || perr != nil {
		w.violate("goroutine %d: read token %q: %v %v", w.g, raw, err, perr)
	}
	return n
}

// TestTortureMultiProcess: 4 processes x 2 goroutines (two processes share
// one backend per process, two use one per goroutine; one also sweeps the
// directory continuously) take one name in a random mix of exclusive and
// shared modes, through Acquire, TryAcquire and Acquire with deadlines that
// race with grants. Inside, exclusive holders do a non-atomic
// read-modify-write of a counter and hold an O_EXCL marker; shared holders
// check that no exclusive marker exists and count themselves. Never two
// exclusive holders, never exclusive with shared, exact final counters,
// strictly increasing exclusive tokens, shared tokens never below the last
// exclusive one (also across sweeps, through the floor).
//
// It runs twice: with no takeover anywhere (acquirers skip the guard) and
// with takeover armed (TakeoverAfter of an hour, so nothing is taken over,
// but every verification goes through the guard).
func TestTortureMultiProcess(t *testing.T) {
	t.Run("guard unarmed", func(t *testing.T) { tortureRun(t, 0) })
	t.Run("guard armed", func(t *testing.T) { tortureRun(t, time.Hour) })
}

func tortureRun(t *testing.T, takeoverAfter time.Duration) {
	const procs, goroutines = 4, 2
	iters, deadline := 200, 90*time.Second
	if longRun() {
		iters, deadline = 2500, 15*time.Minute
	}
	root := t.TempDir()
	state, work := filepath.Join(root, "state"), filepath.Join(root, "work")
	require.NoError(t, os.MkdirAll(filepath.Join(work, tortureShDir), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(work, tortureCounter), []byte("0"), 0o644))
	seed := rand.Uint64()
	t.Logf("seed %d, %d processes x %d goroutines x %d iterations", seed, procs, goroutines, iters)

	ps := make([]*helperProc, procs)
	for i := range ps {
		ps[i] = startHelper(t, "torture", helperArgs{
			Dir: state, Name: "torture", Work: work,
			Goroutines: goroutines, Iterations: iters, Seed: seed + uint64(i),
			PerGoroutine: i%2 == 1, Sweep: i == 0, TakeoverAfter: takeoverAfter,
			Deadline: deadline,
		})
	}
	var total tortureResult
	for i, p := range ps {
		f := p.expect(t, "RESULT", deadline+time.Minute)
		var r tortureResult
		require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(strings.Join(f, " "), "RESULT ")), &r))
		err := p.waitExit(t, time.Minute)
		t.Logf("process %d (pid %d): %d exclusive, %d shared, %d cancelled, %d tried, %d swept; exit %v",
			i, p.pid(), r.Exclusive, r.Shared, r.Cancelled, r.Tries, r.Swept, err)
		assert.Empty(t, r.Violations, "process %d reported violations", i)
		assert.NoError(t, err, "process %d exit status", i)
		assert.Equal(t, goroutines*iters, r.Exclusive+r.Shared, "process %d sections", i)
		total.Exclusive += r.Exclusive
		total.Shared += r.Shared
		total.Swept += r.Swept
	}
	raw, err := os.ReadFile(filepath.Join(work, tortureCounter))
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(total.Exclusive), string(raw), "exclusive counter")
	st, err := os.Stat(filepath.Join(work, tortureShared))
	require.NoError(t, err)
	assert.EqualValues(t, total.Shared, st.Size(), "shared counter")
	assert.NoFileExists(t, filepath.Join(work, tortureExMark))
	left, err := os.ReadDir(filepath.Join(work, tortureShDir))
	require.NoError(t, err)
	assert.Empty(t, left, "shared markers left behind")
	assert.Positive(t, total.Exclusive)
	assert.Positive(t, total.Shared)
	t.Logf("total: %d exclusive, %d shared sections, %d lock files swept", total.Exclusive, total.Shared, total.Swept)
}

// TestKillHolderHandoff: three helper processes contend for one name; the
// holder is SIGKILLed and the time from kill to the next grant (both read
// on CLOCK_MONOTONIC, in different processes) is measured. Between
// handoffs a random waiter is sometimes killed as well, which must grant
// nothing. Every kill of the holder is followed by exactly one grant, with
// a larger token, within patience: the waiters are woken by the dead
// holder's close (or the safety poll), never left waiting. The handoff
// times are logged; their figures belong to the benchmarks.
func TestKillHolderHandoff(t *testing.T) {
	const procs, trials = 3, 10
	dir := t.TempDir()
	args := helperArgs{Dir: dir, Name: "handoff"}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 0))

	type event struct {
		p    *helperProc
		line string
	}
	events := make(chan event)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	live := map[*helperProc]string{} // "starting", "waiting", "holding"
	start := func() {
		p := startHelper(t, "contend", args)
		live[p] = "starting"
		go func() {
			for line := range p.lines {
				select {
				case events <- event{p, line}:
				case <-stop:
					return
				}
			}
		}()
	}
	// handle applies one event; it returns the grant time of a grant.
	var lastToken uint64
	handle := func(ev event) (granted bool, at time.Duration) {
		f := strings.Fields(ev.line)
		require.NotEmpty(t, f)
		if _, ok := live[ev.p]; !ok {
			// A line from a process already killed: a killed waiter
			// must never have been granted.
			require.NotEqualf(t, "granted", f[0], "killed waiter pid %d had been granted", ev.p.pid())
			return false, 0
		}
		switch f[0] {
		case "waiting":
			live[ev.p] = "waiting"
		case "granted":
			require.Len(t, f, 3)
			for p, s := range live {
				require.NotEqualf(t, "holding", s, "pid %d granted while pid %d still holds", ev.p.pid(), p.pid())
			}
			tok, err := strconv.ParseUint(f[2], 10, 64)
			require.NoError(t, err)
			require.Greater(t, tok, lastToken, "tokens must increase across holders")
			lastToken = tok
			live[ev.p] = "holding"
			return true, parseMono(t, f[1])
		default:
			t.Fatalf("pid %d: unexpected line %q", ev.p.pid(), ev.line)
		}
		return false, 0
	}
	next := func(what string) event {
		select {
		case ev := <-events:
			return ev
		case <-time.After(30 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
		}
		return event{}
	}
	// settle processes events until every process waits or holds, with
	// exactly one holder.
	settle := func() *helperProc {
		for {
			var holder *helperProc
			ready := true
			for p, s := range live {
				switch s {
				case "holding":
					holder = p
				case "starting":
					ready = false
				}
			}
			if ready && holder != nil {
				return holder
			}
			handle(next("the helpers to settle"))
		}
	}
	kill := func(p *helperProc) time.Duration {
		t0 := monoNow()
		p.signal(t, syscall.SIGKILL)
		delete(live, p)
		return t0
	}

	for range procs {
		start()
	}
	var lat []time.Duration
	for trial := range trials {
		holder := settle()
		if rng.IntN(2) == 0 {
			// Kill a random waiter: nothing may be granted.
			var ws []*helperProc
			for p, s := range live {
				if s == "waiting" {
					ws = append(ws, p)
				}
			}
			v := ws[rng.IntN(len(ws))]
			kill(v)
			_ = v.waitExit(t, 30*time.Second)
			start()
			holder = settle()
		}
		// Let the holder work for a while, so the waiters are in their
		// steady state (longest poll delays) when it dies.
		time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
		t0 := kill(holder)
		var d time.Duration
		for {
			ev := next("a grant after the holder was killed")
			if ok, at := handle(ev); ok {
				d = at - t0
				require.Positive(t, d, "pid %d was granted before the holder was killed", ev.p.pid())
				t.Logf("trial %d: killed holder pid %d, pid %d granted after %v", trial, holder.pid(), ev.p.pid(), d)
				break
			}
		}
		lat = append(lat, d)
		start()
	}
	med := median(lat)
	t.Logf("kill -> grant: median %v, all %v", med, lat)
	for _, d := range lat {
		assert.LessOrEqual(t, d, 30*time.Second, "handoff after SIGKILL")
	}
}
