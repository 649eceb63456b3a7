package lockengine

import "time"

// stamp is a moment kept in 8 bytes where a time.Time takes 24: the
// nanoseconds on the monotonic clock since clockBase. Leases, groups and
// waiters each keep one, so the 16 bytes count once per held name and per
// waiter (see docs/benchmarks.md, Memory).
//
// Durations between stamps are monotonic, like those between time.Now
// readings. The time.Time a stamp converts back to is clockBase plus the
// monotonic time elapsed: should the wall clock be stepped after the
// process started, its wall reading differs from what time.Now said at
// that moment by the step.
type stamp int64

// clockBase is the origin of stamps.
var clockBase = time.Now()

// clockNow returns the current stamp.
func clockNow() stamp { return stamp(time.Since(clockBase)) }

// Time returns s as a time.Time (with a monotonic reading).
func (s stamp) Time() time.Time { return clockBase.Add(time.Duration(s)) }

// Sub returns the duration s-t.
func (s stamp) Sub(t stamp) time.Duration { return time.Duration(s - t) }
