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
// heap is large (memReturnInUse in use, garbage included) or holds free
// pages not yet returned (memReturnFree) and, if so, forces a GC and
// returns every free page (debug.FreeOSMemory): a few milliseconds of CPU
// per check for a daemon with a large heap, nothing for a small idle one.
const (
	memReturnInterval = 30 * time.Second
	memReturnInUse    = 16 << 20
	memReturnFree     = 4 << 20
)

// returnMemory runs the check until stop is closed.
func returnMemory(stop <-chan struct{}) {
	t := time.NewTicker(memReturnInterval)
	defer t.Stop()
	s := []rtmetrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	val := func(i int) uint64 {
		if s[i].Value.Kind() == rtmetrics.KindUint64 {
			return s[i].Value.Uint64()
		}
		return 0
	}
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		rtmetrics.Read(s)
		if val(0)+val(1) >= memReturnInUse || val(2) >= memReturnFree {
			debug.FreeOSMemory()
		}
	}
}
