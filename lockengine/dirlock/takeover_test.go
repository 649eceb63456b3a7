package dirlock

// A stuck live holder and 12 contenders. With takeover off nobody may ever
// acquire while the holder is stuck, however old its lock file looks. With
// takeover on, every stuck holder is replaced by exactly one contender at a
// time, tokens grow, and the replaced holder learns that it lost the lock.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/lockengine"
)

const contenders = 12

// ageFile sets a file's times to the epoch, so that any age-based
// staleness rule would call its holder dead.
func ageFile(t *testing.T, path string) {
	t.Helper()
	ts := []unix.Timespec{{Sec: 1}, {Sec: 1}}
	require.NoError(t, unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// takeoverOffContenders runs the takeover-off half of the stuck-holder
// scenario once the stuck holder exists: 12 contenders, each with its own backend
// and queue, wait through 20 heartbeat intervals and none may acquire;
// then unstick releases the holder and every contender must get the lock,
// one at a time.
func takeoverOffContenders(t *testing.T, dir, name string, hb time.Duration, unstick func()) {
	ctx := testCtx(t, time.Minute)
	var (
		inside atomic.Int32
		double atomic.Int32
	)
	grants := make(chan result, contenders)
	queues := make([]*lockengine.Queue, contenders)
	for i := range queues {
		_, queues[i] = openQueue(t, dir, Options{Heartbeat: hb})
		go func(q *lockengine.Queue) {
			l, err := q.Acquire(ctx, name, lockengine.Exclusive)
			if err == nil {
				if inside.Add(1) != 1 {
					double.Add(1)
				}
				inside.Add(-1)
				err = l.Release()
			}
			grants <- result{l, err, time.Now()}
		}(queues[i])
	}
	eventually(t, 30*time.Second, "all contenders to queue", func() bool {
		for _, q := range queues {
			if s := q.Snapshot(); len(s) != 1 || s[0].Waiters != 1 {
				return false
			}
		}
		return true
	})
	window := 20 * hb
	select {
	case r := <-grants:
		t.Fatalf("a contender acquired (err %v) while the holder was stuck and takeover is off", r.err)
	case <-time.After(window): // the observation window itself
	}
	t.Logf("no contender acquired during %v (%d heartbeat intervals)", window, window/hb)

	unstick()
	for i := range contenders {
		select {
		case r := <-grants:
			require.NoError(t, r.err, "contender %d", i)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d contenders acquired after the holder went away", i, contenders)
		}
	}
	assert.Zero(t, double.Load(), "two contenders inside at once")
}

// TestTakeoverOffStuckHolder: with takeover off (the default), a live
// holder that stopped refreshing its lock file keeps the name however long
// it is stuck and however old the file looks; once it goes away, all 12
// contenders get the name in turn.
func TestTakeoverOffStuckHolder(t *testing.T) {
	const hb = 20 * time.Millisecond
	t.Run("stopped heartbeat", func(t *testing.T) {
		dir := t.TempDir()
		b, q := openQueue(t, dir, Options{Heartbeat: hb})
		l := acquire(t, q, "stuck", lockengine.Exclusive)
		mustHold(t, b, "stuck").reg.Stop() // stuck: flock held, never refreshed
		ageFile(t, lockPath(dir, "stuck"))
		takeoverOffContenders(t, dir, "stuck", hb, func() {
			require.NoError(t, l.Err(), "the stuck holder still holds")
			require.NoError(t, l.Release())
		})
	})
	t.Run("stopped process", func(t *testing.T) {
		dir := t.TempDir()
		p := startHelper(t, "contend", helperArgs{Dir: dir, Name: "stuck", Heartbeat: hb})
		p.expect(t, "waiting", 30*time.Second)
		p.expect(t, "granted", 30*time.Second)
		p.signal(t, syscall.SIGSTOP)
		p.waitStopped(t)
		ageFile(t, lockPath(dir, "stuck"))
		takeoverOffContenders(t, dir, "stuck", hb, func() { p.signal(t, syscall.SIGKILL) })
	})
}

// TestTakeoverStuckHolders: the stuck-holder scenario with takeover on and
// short intervals. 13 instances (each its own backend and queue) share a
// directory; whoever is granted enters an exclusive section, leaves it and
// becomes a stuck holder (its heartbeat blocked, never released), so each
// of the next grants needs a real takeover while 12 contenders race for it.
// Zero double holders, every grant replaces the lock file, tokens strictly
// increase, and every replaced holder, when its heartbeat resumes, reports
// the lock lost at once. A holder taken over before it reached the section
// (descheduled past TakeoverAfter) is fenced off by its token and must
// report the loss.
func TestTakeoverStuckHolders(t *testing.T) {
	const hb = 5 * time.Millisecond
	opts := Options{Heartbeat: hb, TakeoverAfter: 3 * hb}
	trials := 200
	if longRun() {
		trials = 2000
	}
	dir := t.TempDir()
	const name = "stuck"
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	var (
		inside    atomic.Int32
		lastToken atomic.Uint64
		vmu       sync.Mutex
		problems  []string
		lostLat   []time.Duration
	)
	// fence admits token to the section when it is above every token the
	// section admitted before.
	fence := func(token uint64) bool {
		for {
			prev := lastToken.Load()
			if token <= prev {
				return false
			}
			if lastToken.CompareAndSwap(prev, token) {
				return true
			}
		}
	}
	var fenced atomic.Int32
	violate := func(format string, args ...any) {
		vmu.Lock()
		defer vmu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	type grant struct {
		inst   int
		token  uint64
		ino    uint64
		resume chan bool // true: superseded, expect lost; false: shutdown
	}
	grants := make(chan grant)

	var wg sync.WaitGroup
	for i := range contenders + 1 {
		b, q := openQueue(t, dir, opts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				l, err := q.Acquire(ctx, name, lockengine.Exclusive)
				if err != nil {
					if ctx.Err() == nil {
						violate("instance %d: acquire: %v", i, err)
					}
					return
				}
				// With TakeoverAfter at 15 ms, a holder that the
				// scheduler leaves off the CPU for longer (a loaded
				// machine, the race detector) is taken over before it
				// reaches the section; that is the protocol working, and
				// its token is what fences it off. So the section is
				// guarded as a fenced resource is: a holder that knows its
				// lease ended, or whose token is below the highest the
				// section accepted, stays out, and must be reported lost.
				if !fence(l.Token()) || l.Err() != nil {
					select {
					case <-l.Done():
						if err := l.Err(); !errors.Is(err, lockengine.ErrLost) {
							violate("instance %d: fenced-off holder ended with %v, want ErrLost", i, err)
						}
					case <-time.After(10 * time.Second):
						violate("instance %d: holder fenced off by token %d (its own %d) was not reported lost within 10s",
							i, lastToken.Load(), l.Token())
					}
					fenced.Add(1)
					_ = l.Release()
					continue
				}
				// The exclusive section.
				if n := inside.Add(1); n != 1 {
					violate("instance %d (token %d): %d holders inside the exclusive section", i, l.Token(), n)
				}
				inside.Add(-1)

				// Become a stuck holder: flock held, heartbeat blocked.
				// No hold means it was taken over and given back
				// already: its lease is lost, as the test expects of
				// every superseded holder.
				h := b.holdOf(name)
				var ino uint64
				if h != nil {
					h.mu.Lock()
					ino = h.lf.ino
				}
				unfreeze := func() {
					if h != nil {
						h.mu.Unlock()
					}
				}
				g := grant{inst: i, token: l.Token(), ino: ino, resume: make(chan bool, 1)}
				select {
				case grants <- g:
				case <-ctx.Done():
					unfreeze()
					_ = l.Release()
					return
				}
				var superseded bool
				select {
				case superseded = <-g.resume:
				case <-ctx.Done():
				}
				t0 := time.Now()
				unfreeze() // resume: the pending beat runs
				if superseded {
					select {
					case <-l.Done():
						d := time.Since(t0)
						vmu.Lock()
						lostLat = append(lostLat, d)
						vmu.Unlock()
						if err := l.Err(); !errors.Is(err, lockengine.ErrLost) {
							violate("instance %d: replaced holder ended with %v, want ErrLost", i, err)
						}
					case <-time.After(10 * time.Second):
						violate("instance %d: replaced holder resumed and did not report lost within 10s", i)
					}
				}
				_ = l.Release()
			}
		}()
	}

	t.Cleanup(func() { // before the queues close: unfreeze and stop everyone
		cancel()
		wg.Wait()
	})

	var (
		prev    *grant
		winners = map[int]int{}
		start   = time.Now()
		late    int // grants reported after a later one
	)
	for n := 0; n <= trials; n++ { // the first grant is a plain one, then trials takeovers
		var g grant
		select {
		case g = <-grants:
		case <-time.After(30 * time.Second):
			vmu.Lock()
			t.Logf("problems so far: %q", problems)
			vmu.Unlock()
			t.Fatalf("no takeover within 30s after %d of %d trials", n, trials)
		}
		if prev != nil && g.token < prev.token {
			// Taken over after its section and before it reported
			// (the scheduler left it off the CPU past TakeoverAfter):
			// the later grant already superseded it, so it is no
			// trial, but it must still be reported lost.
			late++
			g.resume <- true
			n--
			continue
		}
		winners[g.inst]++
		if prev != nil {
			assert.NotEqual(t, prev.ino, g.ino, "trial %d: grant without replacing the stuck holder's file", n)
			assert.Greater(t, g.token, prev.token, "trial %d: token", n)
			prev.resume <- true
		}
		prev = &g
	}
	elapsed := time.Since(start)
	cancel()
	prev.resume <- false
	wg.Wait()

	vmu.Lock()
	defer vmu.Unlock()
	assert.Empty(t, problems, "double holders or other violations")
	require.NotEmpty(t, lostLat)
	var worst time.Duration
	for _, d := range lostLat {
		worst = max(worst, d)
	}
	t.Logf("%d takeovers in %v (%v each), winners per instance %v", trials, elapsed.Round(time.Millisecond), (elapsed / time.Duration(trials)).Round(time.Microsecond), winners)
	t.Logf("resumed stuck holder -> lost: median %v, max %v (%d samples); %d grants taken over before their section, %d after it and before they reported",
		median(lostLat), worst, len(lostLat), fenced.Load(), late)
	// About one interval on an idle machine (logged above); the bound is
	// generous so that a loaded machine does not fail it.
	assert.LessOrEqual(t, worst, 10*time.Second, "a resumed stuck holder must report lost within a few intervals")
}

// lostBound is how long a holder may take to report a loss that its
// heartbeat (interval hb) can see: one interval plus generous slack.
func lostBound(hb time.Duration) time.Duration { return hb + 500*time.Millisecond }

// TestTakeoverLiveHolderSeesLost: when another process takes the name over
// (white-box: the takeover is forced, without waiting for staleness), the
// old holder, whose heartbeat is running, sees Done closed with ErrLost
// within about one interval, and the new grant's token is larger.
func TestTakeoverLiveHolderSeesLost(t *testing.T) {
	const hb = 500 * time.Millisecond
	dir := t.TempDir()
	_, q1 := openQueue(t, dir, Options{Heartbeat: hb})
	b2, _ := openQueue(t, dir, Options{Heartbeat: hb, TakeoverAfter: 3 * hb})
	l1 := acquire(t, q1, "x", lockengine.Exclusive)

	var (
		h   lockengine.Hold
		err error
	)
	eventually(t, 30*time.Second, "a forced takeover", func() bool {
		lf, oerr := b2.openFile("x")
		require.NoError(t, oerr)
		var st unix.Stat_t
		require.NoError(t, fstatat(b2.locksFd, "x", &st))
		w := staleWatch{valid: true, dev: st.Dev, ino: st.Ino, mtim: st.Mtim, ctim: st.Ctim, since: time.Now()}
		h, err = b2.takeover("x", lf, lockengine.Exclusive, &w, nil)
		if errors.Is(err, lockengine.ErrWouldBlock) { // the holder refreshed in between
			closeFd(lf.fd)
			return false
		}
		require.NoError(t, err)
		return true
	})
	t0 := time.Now()
	defer h.Unlock()
	assert.Greater(t, h.Token(), l1.Token())
	select {
	case <-l1.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("old holder never learned that its lock was taken over")
	}
	d := time.Since(t0)
	t.Logf("taken over -> old holder lost after %v (heartbeat %v)", d, hb)
	require.ErrorIs(t, l1.Err(), lockengine.ErrLost)
	assert.LessOrEqual(t, d, lostBound(hb))
}

// TestTakeoverStoppedProcessSeesLost: heartbeat starvation with takeover
// on. A helper holding the name is SIGSTOPped; a contender
// takes over, no sooner than TakeoverAfter after the holder's last
// possible refresh, with a larger token; when the helper is continued it
// reports the lock lost within about one interval.
func TestTakeoverStoppedProcessSeesLost(t *testing.T) {
	const hb = 20 * time.Millisecond
	const after = 3 * hb
	dir := t.TempDir()
	p := startHelper(t, "contend", helperArgs{Dir: dir, Name: "x", Heartbeat: hb})
	p.expect(t, "waiting", 30*time.Second)
	f := p.expect(t, "granted", 30*time.Second)
	oldTok, err := strconv.ParseUint(f[2], 10, 64)
	require.NoError(t, err)

	_, q := openQueue(t, dir, Options{Heartbeat: hb, TakeoverAfter: after})
	tStop := monoNow()
	p.signal(t, syscall.SIGSTOP)
	p.waitStopped(t)
	l := acquire(t, q, "x", lockengine.Exclusive)
	tGrant := monoNow()
	t.Logf("taken over %v after SIGSTOP (TakeoverAfter %v)", tGrant-tStop, after)
	assert.GreaterOrEqual(t, tGrant-tStop, after-hb, "taken over before the holder could have been stale for TakeoverAfter")
	assert.Greater(t, l.Token(), oldTok)

	tCont := monoNow()
	p.signal(t, syscall.SIGCONT)
	f = p.expect(t, "lost", 30*time.Second)
	d := parseMono(t, f[1]) - tCont
	t.Logf("continued -> helper reported lost after %v", d)
	assert.LessOrEqual(t, d, lostBound(hb))
	assert.NoError(t, l.Err(), "the new holder keeps the lock")
	require.NoError(t, l.Release())
}

// TestTakeoverWaiterOnOrphanedFile: a waiter whose descriptor names a lock
// file that was replaced (by a takeover) or removed while a stuck holder
// still holds the old inode must notice and move to the file now at the
// path; otherwise it waits for the stuck holder forever although the name
// is free.
func TestTakeoverWaiterOnOrphanedFile(t *testing.T) {
	const hb = 10 * time.Millisecond
	opts := Options{Heartbeat: hb, TakeoverAfter: 3 * hb}

	// stuck returns a directory in which a stuck holder holds name.
	stuck := func(t *testing.T) string {
		dir := t.TempDir()
		b, q := openQueue(t, dir, opts)
		acquire(t, q, "x", lockengine.Exclusive)
		mustHold(t, b, "x").reg.Stop()
		return dir
	}

	t.Run("waiter after takeover", func(t *testing.T) {
		dir := stuck(t)
		ctx := testCtx(t, time.Minute)
		_, q1 := openQueue(t, dir, opts)
		_, q2 := openQueue(t, dir, opts)
		r1 := acquireAsync(ctx, q1, "x", lockengine.Exclusive)
		r2 := acquireAsync(ctx, q2, "x", lockengine.Exclusive)
		var first result
		var other <-chan result
		select {
		case first = <-r1:
			other = r2
		case first = <-r2:
			other = r1
		case <-time.After(30 * time.Second):
			t.Fatal("no takeover of the stuck holder")
		}
		require.NoError(t, first.err)
		require.NoError(t, first.l.Release())
		t0 := time.Now()
		select {
		case r := <-other:
			require.NoError(t, r.err)
			t.Logf("second waiter granted %v after the name became free", time.Since(t0))
			require.NoError(t, r.l.Release())
		case <-time.After(5 * time.Second):
			t.Fatal("BUG: the name is free but a waiter still polls the replaced lock file held by the stuck holder")
		}
	})

	t.Run("try after takeover", func(t *testing.T) {
		dir := stuck(t)
		_, q1 := openQueue(t, dir, opts)
		_, q2 := openQueue(t, dir, opts)
		_, err := q2.TryAcquire(context.Background(), "x", lockengine.Exclusive)
		require.ErrorIs(t, err, lockengine.ErrWouldBlock)
		l := acquire(t, q1, "x", lockengine.Exclusive) // takes over
		require.NoError(t, l.Release())
		l, err = q2.TryAcquire(context.Background(), "x", lockengine.Exclusive)
		require.NoError(t, err, "BUG: the name is free but TryAcquire tried the replaced lock file it had cached")
		require.NoError(t, l.Release())
	})

	t.Run("waiter after removal by hand", func(t *testing.T) {
		dir := stuck(t)
		ctx := testCtx(t, time.Minute)
		_, q1 := openQueue(t, dir, Options{Heartbeat: hb})
		r1 := acquireAsync(ctx, q1, "x", lockengine.Exclusive)
		eventually(t, 10*time.Second, "the waiter to queue", func() bool {
			s := q1.Snapshot()
			return len(s) == 1 && s[0].Waiters == 1
		})
		require.NoError(t, unix.Unlink(lockPath(dir, "x")))
		select {
		case r := <-r1:
			require.NoError(t, r.err)
			require.NoError(t, r.l.Release())
		case <-time.After(5 * time.Second):
			// A newcomer gets the name at once from the new file, so the
			// waiter that came first is starved, not merely kept waiting.
			_, q2 := openQueue(t, dir, Options{Heartbeat: hb})
			l, err := q2.TryAcquire(ctx, "x", lockengine.Exclusive)
			if err == nil {
				_ = l.Release()
			}
			t.Fatalf("BUG: the lock file was removed but the waiter still polls the removed inode held by the stuck holder (a newcomer's TryAcquire: %v)", err)
		}
	})
}
