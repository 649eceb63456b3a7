package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrCheckStuck is reported for a round of a [Watchdog] that starts no
// check because the check of an earlier round has still not returned.
var ErrCheckStuck = errors.New("sdnotify: an earlier health check has not returned yet")

// Watchdog sends keep-alive pings while a health check passes. The zero
// value is not usable: Interval, Check and Notify are required.
type Watchdog struct {
	// Interval is the time between rounds: half of the watchdog timeout
	// (see WatchdogTimeout), as systemd recommends.
	Interval time.Duration
	// Timeout is the deadline of each check; zero means Interval/2. It
	// must be shorter than Interval, so that a slow check still pings in
	// time: consecutive pings are then at most Interval+Timeout apart.
	Timeout time.Duration
	// Check reports whether the service is healthy. It runs in a
	// goroutine of its own with a context that ends at the deadline. A
	// check that ignores its context and stays blocked (in a system call
	// on a hung filesystem, say) is left alone: no round starts another
	// check until it has returned, and no ping is sent meanwhile.
	Check func(ctx context.Context) error
	// Notify sends a message; Run calls it with WatchdogPing. Usually
	// [Notify].
	Notify func(state string) error
	// Report, if not nil, is called from Run's goroutine after every
	// round: with nil when the check passed and the ping was sent, else
	// with why not (the check's error, a deadline error wrapping
	// context.DeadlineExceeded, ErrCheckStuck, or the send error).
	Report func(err error)
}

// Run runs a round at once and then every Interval until ctx is done. A
// round checks and, when the check passes, pings. When ctx ends while a
// check of the current round runs, Run waits for that check until its
// deadline (not longer), so that the caller may then tear down what the
// check looks at; it never waits for a check stuck since an earlier round.
func (w *Watchdog) Run(ctx context.Context) {
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = w.Interval / 2
	}
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	var stuck <-chan error // result of a check that missed its deadline
	for {
		var err error
		stuck, err = w.round(ctx, timeout, stuck)
		if ctx.Err() != nil {
			return
		}
		if w.Report != nil {
			w.Report(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// round runs one check and pings if it passes. stuck is the result channel
// of an earlier check that missed its deadline, or nil; round returns the
// one to pass to the next round.
func (w *Watchdog) round(ctx context.Context, timeout time.Duration, stuck <-chan error) (<-chan error, error) {
	if stuck != nil {
		select {
		case <-stuck:
			// It has returned at last; its verdict is stale. Check
			// afresh.
		default:
			return stuck, ErrCheckStuck
		}
	}
	deadline := time.Now().Add(timeout)
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Check(cctx) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("health check: %w", err)
		}
	case <-cctx.Done():
		if ctx.Err() != nil {
			// Shutting down: give the check the rest of its deadline
			// to return before the caller tears things down.
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			select {
			case <-done:
			case <-t.C:
			}
			return nil, ctx.Err()
		}
		select {
		case <-done: // returned just at the deadline: too late all the same
			return nil, fmt.Errorf("health check: no answer within %v: %w", timeout, context.DeadlineExceeded)
		default:
			return done, fmt.Errorf("health check: no answer within %v: %w", timeout, context.DeadlineExceeded)
		}
	}
	if err := w.Notify(WatchdogPing); err != nil {
		return nil, fmt.Errorf("watchdog ping: %w", err)
	}
	return nil, nil
}
