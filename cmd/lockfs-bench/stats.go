package main

import (
	"cmp"
	"errors"
	"slices"
)

// event is a timestamped line of a handoff client: 'R' just before a
// release, 'G' just after a grant (CLOCK_MONOTONIC ns, shared by all
// processes on the machine).
type event struct {
	kind byte
	t    int64
}

// handoffLatencies pairs each grant with the release right before it (by
// the other process) and returns the sorted latencies in ns.
func handoffLatencies(events []event) ([]float64, error) {
	slices.SortFunc(events, func(a, b event) int { return cmp.Compare(a.t, b.t) })
	var lat []float64
	for i := 1; i < len(events); i++ {
		if events[i].kind == 'G' && events[i-1].kind == 'R' {
			lat = append(lat, float64(events[i].t-events[i-1].t))
		}
	}
	if len(lat) == 0 {
		return nil, errors.New("handoff: no handoffs observed")
	}
	slices.Sort(lat)
	return lat, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(sorted []float64, p int) float64 {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}
