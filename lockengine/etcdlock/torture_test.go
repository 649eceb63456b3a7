package etcdlock_test

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/etcdlock"
)

// Torture tests call the backends directly, several goroutines per backend
// on one name (more than lockengine.Queue ever does), and check the
// invariants inside the critical section with atomics.

const tortureGoroutines = 4 // per backend

// tortureRounds is per goroutine; LOCKFS_LONG=1 runs ten times as many.
var tortureRounds = 25

func init() {
	if os.Getenv("LOCKFS_LONG") == "1" {
		tortureRounds = 250
	}
}

func TestTortureExclusive(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	ctx := ctxT(t)
	var (
		inside    atomic.Int32
		lastToken atomic.Uint64
		grants    atomic.Int32
		wg        sync.WaitGroup
	)
	for g := range 2 * tortureGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bs[g%2]
			for range tortureRounds {
				var h lockengine.Hold
				var err error
				if g%4 == 0 {
					h, err = b.TryLock(ctx, "t", ex, nil)
					if err != nil {
						assert.ErrorIs(t, err, lockengine.ErrWouldBlock)
						continue
					}
				} else if h, err = b.Lock(ctx, "t", ex, nil); !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, int32(1), inside.Add(1), "two exclusive holders")
				prev := lastToken.Swap(h.Token())
				assert.Greater(t, h.Token(), prev, "tokens increase in grant order")
				grants.Add(1)
				inside.Add(-1)
				assert.NoError(t, h.Unlock())
			}
		}()
	}
	wg.Wait()
	require.GreaterOrEqual(t, int(grants.Load()), tortureGoroutines*tortureRounds)
	require.Zero(t, allKeys(t, prefix, "t"), "nothing left behind")
}

func TestTortureMixed(t *testing.T) {
	prefix, bs := backends(t, 2, etcdlock.Options{})
	ctx := ctxT(t)
	var (
		writers, readers atomic.Int32
		lastW, maxR      atomic.Uint64
		nw, nr           atomic.Int32
		wg               sync.WaitGroup
	)
	for g := range 2 * tortureGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := bs[g%2]
			for i := range tortureRounds {
				mode := sh
				if (i+g)%3 == 0 {
					mode = ex
				}
				h, err := b.Lock(ctx, "m", mode, nil)
				if !assert.NoError(t, err) {
					return
				}
				tok := h.Token()
				if mode == ex {
					assert.Equal(t, int32(1), writers.Add(1), "two exclusive holders")
					assert.Zero(t, readers.Load(), "exclusive holder with readers")
					assert.Greater(t, tok, lastW.Swap(tok), "exclusive tokens increase")
					assert.Greater(t, tok, maxR.Load(), "exclusive token above every earlier shared one")
					nw.Add(1)
					writers.Add(-1)
				} else {
					readers.Add(1)
					assert.Zero(t, writers.Load(), "reader with an exclusive holder")
					assert.GreaterOrEqual(t, tok, lastW.Load(), "shared token below the last exclusive one")
					for m := maxR.Load(); tok > m && !maxR.CompareAndSwap(m, tok); m = maxR.Load() {
					}
					nr.Add(1)
					readers.Add(-1)
				}
				assert.NoError(t, h.Unlock())
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 2*tortureGoroutines*tortureRounds, int(nw.Load()+nr.Load()))
	require.NotZero(t, nw.Load())
	require.NotZero(t, nr.Load())
	require.Zero(t, allKeys(t, prefix, "m"), "nothing left behind")
}
