// Package mapshrink gives back the memory of Go maps that grew during a
// burst: a map never releases its buckets when entries are deleted, so a
// daemon that held 10,000 names keeps a map sized for 10,000 entries after
// they are all released. Shrink, called after deletions, replaces such a
// map by a copy sized for what is left.
package mapshrink

import "maps"

// minPeak is the smallest peak length worth shrinking from: smaller maps
// cost a few KiB at most.
const minPeak = 1024

// Shrink returns m, or a copy of m sized for its current length once m has
// fallen to a quarter of the largest length seen by earlier calls
// (recorded in *peak, which the caller keeps with m, guarded like m) and
// that peak was at least 1024. The copy costs O(len(m)) and happens at most
// once per fall to a quarter, so the cost per deletion stays O(1)
// amortized. The caller must replace its map by the result.
func Shrink[M ~map[K]V, K comparable, V any](m M, peak *int) M {
	n := len(m)
	if n > *peak {
		*peak = n
		return m
	}
	if *peak < minPeak || n > *peak/4 {
		return m
	}
	c := make(M, n)
	maps.Copy(c, m)
	*peak = n
	return c
}
