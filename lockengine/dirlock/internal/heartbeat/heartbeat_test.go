package heartbeat

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeTarget records beats and returns scripted errors.
type fakeTarget struct {
	mu    sync.Mutex
	beats []time.Time
	err   error
	lost  func(error)
}

func (f *fakeTarget) Lost(err error) {
	if f.lost != nil {
		f.lost(err)
	}
}

func (f *fakeTarget) Beat() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beats = append(f.beats, time.Now())
	return f.err
}

func (f *fakeTarget) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeTarget) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.beats)
}

type lostRecorder struct {
	mu  sync.Mutex
	at  []time.Time
	err error
}

func (r *lostRecorder) lost(err error) {
	r.mu.Lock()
	r.at = append(r.at, time.Now())
	r.err = err
	r.mu.Unlock()
}

func (r *lostRecorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.at)
}

func TestBeatsAtMostOneIntervalApart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 10 * time.Second
		l := New(interval)
		defer l.Close()
		ft := &fakeTarget{}
		start := time.Now()
		ft.lost = func(error) { t.Error("lost called") }
		l.Add(ft)
		time.Sleep(10*interval + time.Millisecond)
		synctest.Wait()
		ft.mu.Lock()
		defer ft.mu.Unlock()
		require.GreaterOrEqual(t, len(ft.beats), 10)
		prev := start
		for _, b := range ft.beats {
			require.LessOrEqual(t, b.Sub(prev), interval, "gap between beats")
			prev = b
		}
	})
}

func TestGoneIsLostWithinOneInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Second
		l := New(interval)
		defer l.Close()
		ft := &fakeTarget{}
		var rec lostRecorder
		ft.lost = rec.lost
		l.Add(ft)
		time.Sleep(3 * interval)
		gone := time.Now()
		ft.setErr(errors.Join(ErrGone, errors.New("replaced")))
		time.Sleep(interval)
		synctest.Wait()
		require.Equal(t, 1, rec.calls())
		require.ErrorIs(t, rec.err, ErrGone)
		require.LessOrEqual(t, rec.at[0].Sub(gone), interval)
		n := ft.count()
		time.Sleep(5 * interval)
		synctest.Wait()
		require.Equal(t, n, ft.count(), "a lost target is not beaten again")
		require.Equal(t, 1, rec.calls(), "lost is called once")
	})
}

func TestFailingRefreshIsLostWithinOneInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Second
		l := New(interval)
		defer l.Close()
		ft := &fakeTarget{}
		var rec lostRecorder
		ft.lost = rec.lost
		l.Add(ft)
		time.Sleep(2 * interval)
		failing := time.Now()
		ft.setErr(errors.New("EIO"))
		time.Sleep(2 * interval)
		synctest.Wait()
		require.Equal(t, 1, rec.calls())
		require.ErrorIs(t, rec.err, ErrFailing)
		// Lost no later than one interval after the first failed beat,
		// which came at most one interval after the failure started.
		require.LessOrEqual(t, rec.at[0].Sub(failing), 2*interval)
	})
}

func TestTransientFailureRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Second
		l := New(interval)
		defer l.Close()
		ft := &fakeTarget{err: errors.New("EAGAIN")}
		var rec lostRecorder
		ft.lost = rec.lost
		l.Add(ft)
		// One failure, then recovery.
		time.Sleep(interval)
		synctest.Wait()
		require.Equal(t, 1, ft.count())
		ft.setErr(nil)
		time.Sleep(10 * interval)
		synctest.Wait()
		require.Zero(t, rec.calls())
	})
}

func TestStopAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(time.Second)
		ft := &fakeTarget{}
		ft.lost = func(error) { t.Error("lost after Stop") }
		r := l.Add(ft)
		time.Sleep(2 * time.Second)
		r.Stop()
		r.Stop() // idempotent
		n := ft.count()
		ft.setErr(ErrGone)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		require.Equal(t, n, ft.count())
		l.Close()
		l.Close() // idempotent
		ft.lost = func(error) { t.Error("lost on a closed loop") }
		l.Add(ft)
	})
}

// TestStoppedTargetsAreNotKept checks that the loop lets go of stopped
// targets: a burst of held locks that ended must not stay reachable from
// the loop's list of due targets (their memory would never be given back).
func TestStoppedTargetsAreNotKept(t *testing.T) {
	l := New(8 * time.Millisecond)
	defer l.Close()
	keep := &fakeTarget{} // still registered: the loop keeps running rounds
	l.Add(keep)

	const n = 3
	var collected atomic.Int32
	func() {
		targets := make([]*fakeTarget, n)
		regs := make([]*Registration, n)
		for i := range targets {
			targets[i] = &fakeTarget{}
			runtime.AddCleanup(targets[i], func(*atomic.Int32) { collected.Add(1) }, &collected)
			regs[i] = l.Add(targets[i])
		}
		require.Eventually(t, func() bool {
			for _, ft := range targets {
				if ft.count() == 0 {
					return false
				}
			}
			return true
		}, 10*time.Second, time.Millisecond, "every target beaten")
		for _, r := range regs {
			r.Stop()
		}
	}()
	// Let the loop run more rounds with the one target left.
	start := keep.count()
	require.Eventually(t, func() bool { return keep.count() >= start+2 }, 10*time.Second, time.Millisecond)
	require.Eventually(t, func() bool {
		runtime.GC()
		return collected.Load() == n
	}, 10*time.Second, 10*time.Millisecond, "stopped targets still reachable from the loop")
}
