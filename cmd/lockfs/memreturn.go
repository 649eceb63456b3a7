package main

import (
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// Giving memory back after a burst. The Go runtime keeps freed heap pages
// until a GC has run and then returns them slowly, and a daemon that is
// idle after a burst (10,000 names held and released, 1,000 waiters
// served) allocates nothing, so no GC comes until the runtime's own
// periodic one two minutes later; nor does the runtime return free pages
// promptly (measured: 15 MiB free and kept for minutes after 1,000
// waiters left). returnMemory checks every memReturnInterval whether the
// heap holds memory a GC would give back and, if so, forces a GC and
// returns every free page (debug.FreeOSMemory): a few milliseconds of CPU
// per check for a daemon with a large heap, nothing for a small idle one.
// It does so when
//
//   - the heap is large (memReturnInUse in use, garbage included),
//   - or it holds memReturnFree of free pages not yet returned,
//   - or the heap's objects and goroutine stacks exceed, by
//     memReturnGarbage, the live heap of the last GC plus a starting-size
//     stack per goroutine: garbage no GC has collected yet (the requests
//     of a burst leave it behind) or stacks of goroutines that exited
//     (those that served 1,000 blocked openers: the runtime frees them
//     only in a GC).
const (
	memReturnInterval = 30 * time.Second
	memReturnInUse    = 16 << 20
	memReturnFree     = 4 << 20
	memReturnGarbage  = 4 << 20
)

// memReturnMetrics are the runtime metrics returnMemory reads, in the
// order of heapSample's fields (liveStacks is the product of the last
// two).
var memReturnMetrics = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/free:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/stacks:bytes",
	"/sched/goroutines:goroutines",
	"/gc/stack/starting-size:bytes",
}

// returnMemory runs the check until stop is closed, calling forget first
// at every check: the lock engine's ForgetIdle, which drops what it keeps
// of names that went idle. It also serves the debug profiles
// of debugProfileEnv when that is set.
func returnMemory(stop <-chan struct{}, forget func()) {
	go profileOnSignal(stop)
	t := time.NewTicker(memReturnInterval)
	defer t.Stop()
	s := make([]rtmetrics.Sample, len(memReturnMetrics))
	for i, name := range memReturnMetrics {
		s[i].Name = name
	}
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		forget()
		rtmetrics.Read(s)
		h := heapSample{
			objects: sampleValue(s[0]), unused: sampleValue(s[1]), free: sampleValue(s[2]), live: sampleValue(s[3]),
			stacks: sampleValue(s[4]), liveStacks: sampleValue(s[5]) * sampleValue(s[6]),
		}
		if h.shouldReturn() {
			debug.FreeOSMemory()
		}
	}
}

// heapSample is what returnMemory looks at, in bytes.
type heapSample struct {
	objects    uint64 // heap objects, live and garbage
	unused     uint64 // unused slots of in-use spans
	free       uint64 // free pages not returned to the OS
	live       uint64 // the live heap marked by the last GC
	stacks     uint64 // goroutine stacks, dead goroutines' included
	liveStacks uint64 // goroutines times the starting stack size
}

// shouldReturn applies the rule above.
func (h heapSample) shouldReturn() bool {
	return h.objects+h.unused >= memReturnInUse || h.free >= memReturnFree ||
		h.objects+h.stacks >= h.live+h.liveStacks+memReturnGarbage
}

// sampleValue returns s's value, or 0 when the runtime does not provide it.
func sampleValue(s rtmetrics.Sample) uint64 {
	if s.Value.Kind() == rtmetrics.KindUint64 {
		return s.Value.Uint64()
	}
	return 0
}
