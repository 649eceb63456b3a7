package main

import (
	rtmetrics "runtime/metrics"
	"testing"
)

// TestMemReturnMetrics checks that the runtime provides every metric
// returnMemory reads: one it lacks reads as 0 and would skew the rule.
func TestMemReturnMetrics(t *testing.T) {
	known := map[string]bool{}
	for _, d := range rtmetrics.All() {
		known[d.Name] = true
	}
	for _, name := range memReturnMetrics {
		if !known[name] {
			t.Errorf("runtime/metrics has no %s", name)
		}
	}
}

func TestShouldReturn(t *testing.T) {
	const mib = 1 << 20
	idle := heapSample{objects: 3 * mib, unused: mib, live: 3 * mib, stacks: 64 << 10, liveStacks: 64 << 10}
	for _, tc := range []struct {
		name string
		h    heapSample
		want bool
	}{
		{"idle", idle, false},
		{"large heap", heapSample{objects: 15 * mib, unused: mib, live: 15 * mib}, true},
		{"free pages", heapSample{objects: 3 * mib, free: 4 * mib, live: 3 * mib}, true},
		{"garbage since the last GC", heapSample{objects: 8 * mib, live: 3 * mib}, true},
		{"stacks of exited goroutines", heapSample{objects: 3 * mib, live: 3 * mib, stacks: 5 * mib, liveStacks: 64 << 10}, true},
		{"fragmentation alone", heapSample{objects: 3 * mib, unused: 6 * mib, live: 3 * mib}, false},
	} {
		if got := tc.h.shouldReturn(); got != tc.want {
			t.Errorf("%s: shouldReturn() = %v, want %v", tc.name, got, tc.want)
		}
	}
}
