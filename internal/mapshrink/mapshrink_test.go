package mapshrink

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShrinkKeepsEntries: shrinking never loses or changes an entry.
func TestShrinkKeepsEntries(t *testing.T) {
	m := map[int]int{}
	peak := 0
	for i := range 5000 {
		m[i] = i
	}
	for i := range 4990 {
		delete(m, i)
		m = Shrink(m, &peak)
	}
	require.Len(t, m, 10)
	for i := 4990; i < 5000; i++ {
		assert.Equal(t, i, m[i])
	}
	// Shrink records the length it saw (4999 on the first call) and lowers
	// it when it replaces the map: a peak still near 5000, or 0 (never
	// recorded), means no replacement happened.
	assert.Positive(t, peak, "Shrink never recorded a peak")
	assert.LessOrEqual(t, peak, 5000/4, "the map was never replaced")
}

// TestShrinkSmallMapsStay: maps that never reached minPeak are kept.
func TestShrinkSmallMapsStay(t *testing.T) {
	m := map[int]int{}
	peak := 0
	for i := range minPeak - 1 {
		m[i] = i
	}
	for i := range minPeak - 2 {
		delete(m, i)
		m = Shrink(m, &peak)
	}
	// The peak is the length the first Shrink saw; a replacement would
	// have reset it to the length left.
	assert.Equal(t, minPeak-2, peak, "a small map was replaced")
}

// TestShrinkGivesBackMemory: after a burst, the memory of the emptied map
// is collectable.
func TestShrinkGivesBackMemory(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	m := map[int][16]byte{}
	peak := 0
	base := heap()
	for i := range 100000 {
		m[i] = [16]byte{}
	}
	grown := heap() - base
	for i := range 100000 {
		delete(m, i)
		m = Shrink(m, &peak)
	}
	left := max(heap(), base) - base
	t.Logf("map of 100,000: %d KiB; emptied and shrunk: %d KiB", grown/1024, left/1024)
	assert.Less(t, left, grown/10)
	runtime.KeepAlive(m)
}
