package lockengine

import "time"

// stamp is a moment kept in 8 bytes where a time.Time takes 24: the
// nanoseconds on the monotonic clock since clockBase. Leases, groups and
// waiters each keep one, so the 16 bytes count once per held name and per
// waiter (see docs/benchmarks.md, Memory).
//
// Durations between stamps are monotonic, like those between time.Now
// readings. A stamp converts back to a time.Time as now minus its age, so
// the wall reading follows the current wall clock: a clock stepped after
// the process started shifts the reported moments with it instead of
// leaving them off by the step.
type stamp int64

// clockBase is the origin of stamps.
var clockBase = time.Now()

// clockNow returns the current stamp.
func clockNow() stamp { return stamp(time.Since(clockBase)) }

// Time returns s as a time.Time (with a monotonic reading): the current
// time minus s's age.
func (s stamp) Time() time.Time {
	now := time.Now()
	return now.Add(-time.Duration(stamp(now.Sub(clockBase)) - s))
}

// Sub returns the duration s-t.
func (s stamp) Sub(t stamp) time.Duration { return time.Duration(s - t) }
