package etcdlock

// SetWatchFrom makes b's waiters start their watches at f(from) instead of
// from, the revision after their snapshot. Tests use it to make a watch
// end early (start it below a compaction) and exercise the new snapshot
// that follows. Call it before b is used.
func SetWatchFrom(b *Backend, f func(from int64) int64) { b.watchFrom = f }

// SetHoldWatchGate makes every hold's watch of b wait for gate before it
// starts, so that a test can change a key before the holder can see it.
// Call it before b is used.
func SetHoldWatchGate(b *Backend, gate <-chan struct{}) { b.holdWatchGate = gate }

// EncodeName is the encoding of name in keys (P/EncodeName(name)/...).
func EncodeName(name string) string { return encodeName(name) }

// DecodeName undoes EncodeName.
func DecodeName(enc string) string { return decodeName(enc) }
