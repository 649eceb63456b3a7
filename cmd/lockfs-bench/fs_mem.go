package main

import (
	"fmt"
	"time"
)

// settleRSS follows the daemon's resident memory after a burst ended
// (names released, waiters gone) for up to d, sampling every second, and
// describes it against idle, the RSS before the burst: right after, and
// the last sample (the daemon returns memory on its own; see
// cmd/lockfs/memreturn.go). It stops early once RSS is within 10% of
// idle.
func (b *fsBench) settleRSS(dm *daemon, idle memKiB, d time.Duration) (string, error) {
	first, err := readMem(dm.pid())
	if err != nil {
		return "", err
	}
	start := time.Now()
	last := first
	for time.Since(start) < d && float64(last.rss) > 1.1*float64(idle.rss) {
		time.Sleep(time.Second)
		if last, err = readMem(dm.pid()); err != nil {
			return "", err
		}
	}
	pct := func(m memKiB) float64 { return 100 * float64(m.rss-idle.rss) / float64(idle.rss) }
	return fmt.Sprintf("VmRSS after release %.1f MiB (idle %+.0f%%), after %.0f s %.1f MiB (idle %+.0f%%; anonymous %+.1f MiB, file-backed %+.1f MiB)",
		float64(first.rss)/1024, pct(first), time.Since(start).Seconds(), float64(last.rss)/1024, pct(last),
		float64(last.anon-idle.anon)/1024, float64(last.file-idle.file)/1024), nil
}
