package sdnotify

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// recorder collects what a Watchdog sends and reports.
type recorder struct {
	mu      sync.Mutex
	pings   int
	reports []error
}

func (r *recorder) notify(state string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if state != WatchdogPing {
		return errors.New("unexpected message " + state)
	}
	r.pings++
	return nil
}

func (r *recorder) report(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, err)
}

func (r *recorder) state() (pings int, reports []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pings, append([]error(nil), r.reports...)
}

// healthSwitch is a check whose outcome the test sets: pass, fail, or
// block (ignoring its context, like a system call on a hung mount) until
// unblocked.
type healthSwitch struct {
	mu      sync.Mutex
	fail    error
	blocked chan struct{} // non-nil: checks block until it is closed
	calls   int
}

func (h *healthSwitch) check(ctx context.Context) error {
	h.mu.Lock()
	h.calls++
	fail, blocked := h.fail, h.blocked
	h.mu.Unlock()
	if blocked != nil {
		<-blocked
	}
	return fail
}

func (h *healthSwitch) set(fail error, blocked chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail, h.blocked = fail, blocked
}

func (h *healthSwitch) callCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// start runs w in a goroutine; the returned function cancels it and waits
// for Run to return.
func start(w *Watchdog) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// at sleeps until d after the start of the bubble (fake time), then waits
// for every goroutine of the bubble to block.
func at(t0 time.Time, d time.Duration) {
	time.Sleep(time.Until(t0.Add(d)))
	synctest.Wait()
}

// The tests run in a synctest bubble: time is fake and advances only when
// every goroutine is blocked, so round i happens at exactly i*Interval and
// the counts below are exact.

func TestWatchdogPingsWhileHealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		h := &healthSwitch{}
		stop := start(&Watchdog{Interval: time.Second, Check: h.check, Notify: r.notify, Report: r.report})
		at(t0, 3500*time.Millisecond) // rounds at 0, 1, 2, 3s
		pings, reports := r.state()
		if pings != 4 {
			t.Errorf("%d pings after 3.5 intervals, want 4", pings)
		}
		for _, err := range reports {
			if err != nil {
				t.Errorf("report %v, want nil", err)
			}
		}
		stop()
		at(t0, 10*time.Second)
		if p, _ := r.state(); p != 4 {
			t.Errorf("%d pings after Run returned, want still 4", p)
		}
	})
}

func TestWatchdogSkipsFailedChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		h := &healthSwitch{}
		stop := start(&Watchdog{Interval: time.Second, Check: h.check, Notify: r.notify, Report: r.report})
		defer stop()
		at(t0, 500*time.Millisecond) // round 0 passed
		errSick := errors.New("engine sick")
		h.set(errSick, nil)
		at(t0, 2500*time.Millisecond) // rounds 1, 2 failed
		if p, _ := r.state(); p != 1 {
			t.Errorf("%d pings, want 1 (none while the check fails)", p)
		}
		h.set(nil, nil)
		at(t0, 4500*time.Millisecond) // rounds 3, 4 passed
		pings, reports := r.state()
		if pings != 3 {
			t.Errorf("%d pings, want 3 (resumed after the check passes again)", pings)
		}
		if len(reports) != 5 {
			t.Fatalf("%d reports, want 5: %v", len(reports), reports)
		}
		for i, err := range reports {
			if wantFail := i == 1 || i == 2; wantFail != errors.Is(err, errSick) || !wantFail && err != nil {
				t.Errorf("report %d: %v", i, err)
			}
		}
	})
}

func TestWatchdogStuckCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		h := &healthSwitch{}
		stop := start(&Watchdog{Interval: time.Second, Timeout: 400 * time.Millisecond,
			Check: h.check, Notify: r.notify, Report: r.report})
		defer stop()
		at(t0, 1500*time.Millisecond) // rounds 0, 1 passed
		unblock := make(chan struct{})
		h.set(nil, unblock)
		at(t0, 4500*time.Millisecond) // round 2 blocks past its deadline; 3, 4 find it stuck
		pings, reports := r.state()
		if pings != 2 {
			t.Errorf("%d pings, want 2 (none while the check blocks)", pings)
		}
		if c := h.callCount(); c != 3 {
			t.Errorf("%d checks started, want 3 (no second check while one is stuck)", c)
		}
		if len(reports) != 5 {
			t.Fatalf("%d reports, want 5: %v", len(reports), reports)
		}
		if !errors.Is(reports[2], context.DeadlineExceeded) {
			t.Errorf("report 2: %v, want a deadline error", reports[2])
		}
		for _, err := range reports[3:] {
			if !errors.Is(err, ErrCheckStuck) {
				t.Errorf("report %v, want ErrCheckStuck", err)
			}
		}
		h.set(nil, nil)
		close(unblock) // the stuck check returns
		at(t0, 6500*time.Millisecond)
		if p, _ := r.state(); p != 4 {
			t.Errorf("%d pings, want 4 (resumed at rounds 5 and 6)", p)
		}
		if c := h.callCount(); c != 5 {
			t.Errorf("%d checks started, want 5", c)
		}
	})
}

func TestWatchdogStopsOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		// A check that honours its context and blocks until it ends:
		// cancelling Run mid-check must end the check and Run at once.
		entered := make(chan struct{}, 10)
		check := func(ctx context.Context) error {
			entered <- struct{}{}
			if time.Since(t0) < 500*time.Millisecond {
				return nil
			}
			<-ctx.Done()
			return ctx.Err()
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&Watchdog{Interval: time.Second, Check: check, Notify: r.notify, Report: r.report}).Run(ctx)
		}()
		at(t0, 1100*time.Millisecond) // round 1 is waiting for its check
		if len(entered) != 2 {
			t.Fatalf("%d checks, want 2", len(entered))
		}
		cancel()
		<-done
		if d := time.Since(t0); d != 1100*time.Millisecond {
			t.Errorf("Run returned %v after the start, want at once on cancel (1.1s)", d)
		}
		pings, reports := r.state()
		if pings != 1 || len(reports) != 1 {
			t.Errorf("%d pings, %d reports; want 1 and 1 (nothing reported on cancel)", pings, len(reports))
		}
	})
}

func TestWatchdogCancelDoesNotWaitForStuckCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		h := &healthSwitch{}
		unblock := make(chan struct{})
		h.set(nil, unblock)
		stop := start(&Watchdog{Interval: time.Second, Check: h.check, Notify: r.notify, Report: r.report})
		at(t0, 1500*time.Millisecond) // round 0 stuck past its deadline, round 1 found it stuck
		stop()
		if d := time.Since(t0); d != 1500*time.Millisecond {
			t.Errorf("Run returned %v after the start, want at once (1.5s)", d)
		}
		close(unblock) // let the check's goroutine end before the bubble does
		if p, _ := r.state(); p != 0 {
			t.Errorf("%d pings, want 0", p)
		}
	})
}

func TestWatchdogReportsSendErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var r recorder
		errSend := errors.New("socket gone")
		stop := start(&Watchdog{Interval: time.Second, Check: func(context.Context) error { return nil },
			Notify: func(string) error { return errSend }, Report: r.report})
		defer stop()
		at(t0, 500*time.Millisecond)
		if _, reports := r.state(); len(reports) != 1 || !errors.Is(reports[0], errSend) {
			t.Errorf("reports %v, want one wrapping %v", reports, errSend)
		}
	})
}

// Cancelled while the current round's check ignores its context, Run
// waits for that check, but not past the check's deadline.
func TestWatchdogCancelWaitsForCurrentCheckUntilDeadline(t *testing.T) {
	for _, tc := range []struct {
		name     string
		checkFor time.Duration // how long the check of round 1 takes
		want     time.Duration // when Run returns, from the start
	}{
		{"returns", 1300 * time.Millisecond, 1300 * time.Millisecond},
		{"stuck", time.Hour, 1400 * time.Millisecond}, // round 1's deadline: 1s + 400ms
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				release := make(chan struct{})
				check := func(context.Context) error {
					if time.Since(t0) >= time.Second {
						select {
						case <-time.After(time.Until(t0.Add(tc.checkFor))):
						case <-release:
						}
					}
					return nil
				}
				var r recorder
				stop := start(&Watchdog{Interval: time.Second, Timeout: 400 * time.Millisecond,
					Check: check, Notify: r.notify, Report: r.report})
				at(t0, 1200*time.Millisecond) // round 1's check runs
				stop()
				if got := time.Since(t0); got != tc.want {
					t.Errorf("Run returned %v after the start, want %v", got, tc.want)
				}
				close(release)
			})
		})
	}
}
