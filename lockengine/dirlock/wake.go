package dirlock

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel wake-ups for waiters of a name that another process holds.
//
// A waiter (Backend.Lock after a would-block attempt) announces itself on
// the lock file with a waiter mark: an OFD read lock on one byte far past
// the record (markBase+id, id random per wait), which the kernel drops with
// the descriptor, so a dead waiter leaves none. It also watches the locked
// inode with inotify (IN_ATTRIB, IN_CLOSE_WRITE). A releaser (hold.Unlock),
// right after flock(LOCK_UN), asks the kernel for a mark of another open
// file description (F_OFD_GETLK) and, when there is one, touches the file
// (futimens), which the kernel turns into IN_ATTRIB for the watchers. A
// holder that dies closes its descriptor (IN_CLOSE_WRITE); a removed or
// replaced file changes its link count (IN_ATTRIB). So the waiter's next
// attempt follows the release within one inotify delivery; a slow safety
// poll (Options.WakePoll) covers holders that do not announce releases
// (another program flocking the state directory's files, a lockfs without
// wake-ups). OFD locks and flock(2) locks are independent on Linux, so the
// marks never interfere with the locks themselves.
//
// The order closes the race between a release and a new waiter: the
// waiter watches, then marks, then attempts once more before it sleeps; a
// releaser unlocks, then looks for marks. Either the releaser sees the
// mark (and the watch already exists), or its unlock preceded the mark
// and so precedes the waiter's last attempt.
//
// Fairness between daemons: a releaser that saw a mark yields the name to
// that waiter. Until the mark goes (the waiter was granted or gave up), or
// yieldMax passes, its own attempts on the name (TryLock, Lock, the
// Queue's handoff to its next local waiter) count as would-block, so a
// daemon with a queue of local waiters cannot keep the name by re-taking
// it in the instant after each release while the other daemon's woken
// waiter is still on its way. Yielding only ever makes an attempt fail;
// every grant still goes through flock and verify-and-record.

const (
	// markBase is the file offset of the first waiter mark: far past the
	// record, so marks never cover data.
	markBase = 1 << 40
	// markSpan is the range of mark ids.
	markSpan = 1 << 40
	// wakeEvents are the inotify events that wake a waiter: a releaser's
	// touch or a removal/replacement (IN_ATTRIB), a holder's last close
	// (IN_CLOSE_WRITE).
	wakeEvents = unix.IN_ATTRIB | unix.IN_CLOSE_WRITE
)

// yieldMax bounds how long a releaser yields a name to a marked waiter
// of another process that does not take it (a stopped daemon, say). A
// waiter that let a yield expire is not yielded to again (see
// wakeState.yieldTo). A variable for tests.
var yieldMax = 20 * time.Millisecond

// wakeState is a Backend's part of the wake-ups: its inotify watcher
// (created on the first wait for another process) and the names it yields.
type wakeState struct {
	mu      sync.Mutex
	w       *watcher          // guarded by mu; nil until needed, or when inotify failed
	failed  bool              // guarded by mu; inotify is unavailable: poll instead
	closed  bool              // guarded by mu
	yields  map[string]yield  // guarded by mu
	pruneAt time.Time         // guarded by mu; the earliest next pruning of yields
	ignored map[string]uint64 // guarded by mu; name -> the mark of a waiter that let a yield expire
	nYields atomic.Int32      // len(yields), read without mu on every attempt
}

// yield is a name this Backend released while a waiter of another open
// file description was marked on it.
type yield struct {
	id    uint64 // the waiter's mark
	until time.Time
}

// markID returns a random waiter mark id.
func markID() uint64 { return rand.Uint64N(markSpan) }

// setMark sets the waiter mark id on fd.
func setMark(fd int, id uint64) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: markBase + int64(id), Len: 1}
	return ignoringEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk) })
}

// clearMark removes the waiter mark id from fd.
func clearMark(fd int, id uint64) {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart, Start: markBase + int64(id), Len: 1}
	_ = ignoringEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk) })
}

// peekMark returns the id of a waiter mark that another open file
// description than fd's has on the file; ok is false when there is none
// (or the kernel cannot say).
func peekMark(fd int) (id uint64, ok bool) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: markBase, Len: markSpan}
	if err := ignoringEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk) }); err != nil {
		return 0, false
	}
	if lk.Type == unix.F_UNLCK || lk.Start < markBase {
		return 0, false
	}
	return uint64(lk.Start - markBase), true
}

// announceRelease is called by hold.Unlock right after the flock of name
// was dropped on lf: when a waiter of another open file description is
// marked, it wakes the watchers and yields the name to that waiter.
func (b *Backend) announceRelease(name string, lf lockFile) {
	id, ok := peekMark(lf.fd)
	if !ok {
		return
	}
	_ = touch(lf.fd) // IN_ATTRIB for the watchers
	b.wake.yieldTo(name, id)
}

// yieldTo records that name is yielded to the waiter marked id.
func (s *wakeState) yieldTo(name string, id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if ign, ok := s.ignored[name]; ok && ign == id {
		return // it let an earlier yield expire
	}
	delete(s.ignored, name)
	if s.yields == nil {
		s.yields = make(map[string]yield)
	}
	now := time.Now()
	if len(s.yields) >= 64 && now.After(s.pruneAt) {
		// Names released to a waiter and never tried again here. At
		// most one pass per yieldMax, so many live yields do not make
		// every release scan them all.
		s.pruneAt = now.Add(yieldMax)
		for n, y := range s.yields {
			if now.After(y.until) {
				delete(s.yields, n)
			}
		}
	}
	s.yields[name] = yield{id: id, until: now.Add(yieldMax)}
	s.nYields.Store(int32(len(s.yields)))
}

// yielding reports whether an attempt on name through fd must count as
// would-block because the name is yielded to a waiter that is still
// marked. It costs one atomic load while no name is yielded; while any is
// (expired yields of names not tried again included, until yieldTo prunes
// them), it takes s.mu and looks name up.
func (s *wakeState) yielding(name string, fd int) bool {
	if s.nYields.Load() == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	y, ok := s.yields[name]
	if !ok {
		return false
	}
	id, marked := peekMark(fd)
	switch {
	case !marked || id != y.id:
		// Granted, or gone: the yield is over.
	case time.Now().After(y.until):
		// Still marked, still not taken: do not wait for it again.
		if s.ignored == nil {
			s.ignored = make(map[string]uint64)
		}
		if len(s.ignored) >= 1024 {
			clear(s.ignored)
		}
		s.ignored[name] = id
	default:
		return true
	}
	delete(s.yields, name)
	s.nYields.Store(int32(len(s.yields)))
	return false
}

// yielded reports whether name is yielded to a waiter of another process.
func (s *wakeState) yielded(name string) bool {
	if s.nYields.Load() == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.yields[name]
	return ok
}

// waitWake is one Lock call's wake-up: its mark and watch on the
// descriptor it waits with.
type waitWake struct {
	fd    int    // the descriptor marked and watched; -1 when disarmed
	id    uint64 // the mark
	w     *watcher
	wd    int32
	c     chan struct{} // a wake-up; capacity 1
	woken bool          // a mark and a watch are in place: the kernel wakes us
}

// armed reports whether ww waits with fd.
func (ww *waitWake) armed(fd int) bool { return ww != nil && ww.fd == fd }

// armWake marks and watches lf for a Lock call that found name held by
// another process. It never fails: without a mark or a watch, woken is
// false and the caller polls.
func (b *Backend) armWake(ww *waitWake, lf lockFile) *waitWake {
	if ww == nil {
		ww = &waitWake{fd: -1, c: make(chan struct{}, 1)}
	}
	ww.disarm()
	ww.fd = lf.fd
	if w := b.wake.watcher(); w != nil {
		if wd, err := w.add(lf.fd, ww); err == nil {
			ww.w, ww.wd = w, wd
		}
	}
	ww.id = markID()
	marked := setMark(lf.fd, ww.id) == nil
	if !marked {
		ww.id = 0
	}
	ww.woken = marked && ww.w != nil
	return ww
}

// disarm removes the mark and the watch; the descriptor stays open. It is
// a no-op on a nil or disarmed waitWake.
func (ww *waitWake) disarm() {
	if ww == nil || ww.fd < 0 {
		return
	}
	if ww.w != nil {
		ww.w.remove(ww.wd, ww)
		ww.w = nil
	}
	clearMark(ww.fd, ww.id)
	ww.fd, ww.woken = -1, false
	select {
	case <-ww.c:
	default:
	}
}

// forget drops the wake-up of a descriptor that the caller closes (the
// kernel drops its mark with it): only the watch is removed.
func (ww *waitWake) forget() {
	if ww == nil || ww.fd < 0 {
		return
	}
	if ww.w != nil {
		ww.w.remove(ww.wd, ww)
		ww.w = nil
	}
	ww.fd, ww.woken = -1, false
}

// notify wakes the Lock call, without blocking.
func (ww *waitWake) notify() {
	select {
	case ww.c <- struct{}{}:
	default:
	}
}

// watcher returns the Backend's inotify watcher, creating it on first use;
// nil when inotify is unavailable or the Backend is closed.
func (s *wakeState) watcher() *watcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil && !s.failed && !s.closed {
		w, err := newWatcher()
		if err != nil {
			s.failed = true
			return nil
		}
		s.w = w
	}
	return s.w
}

// close stops the watcher. Called by Backend.Close once no Lock call is
// left.
func (s *wakeState) close() {
	s.mu.Lock()
	w := s.w
	s.w, s.closed = nil, true
	s.mu.Unlock()
	if w != nil {
		w.close()
	}
}

// watcher is one inotify instance and the goroutine that reads it; it
// wakes the waitWakes subscribed to each watch descriptor.
type watcher struct {
	file *os.File // the inotify descriptor, non-blocking, read through the runtime poller
	fd   int
	done chan struct{}

	mu     sync.Mutex
	closed bool                             // guarded by mu
	subs   map[int32]map[*waitWake]struct{} // guarded by mu
}

func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	w := &watcher{file: os.NewFile(uintptr(fd), "inotify"), fd: fd, done: make(chan struct{}),
		subs: make(map[int32]map[*waitWake]struct{})}
	go w.read()
	return w, nil
}

// add watches the inode open as fd for ww.
func (w *watcher) add(fd int, ww *waitWake) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errors.New("inotify watcher closed")
	}
	// The descriptor's magic link names exactly the inode we hold open,
	// whatever the path names by now.
	wd, err := unix.InotifyAddWatch(w.fd, "/proc/self/fd/"+strconv.Itoa(fd), wakeEvents)
	if err != nil {
		return 0, err
	}
	s := w.subs[int32(wd)]
	if s == nil {
		s = make(map[*waitWake]struct{}, 1)
		w.subs[int32(wd)] = s
	}
	s[ww] = struct{}{}
	return int32(wd), nil
}

// remove unsubscribes ww from wd, and removes the watch when nobody else
// waits on it.
func (w *watcher) remove(wd int32, ww *waitWake) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.subs[wd]
	delete(s, ww)
	if len(s) == 0 && s != nil {
		delete(w.subs, wd)
		if !w.closed {
			_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
		}
	}
}

// read delivers events until the watcher is closed.
func (w *watcher) read() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			return // closed
		}
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			off += unix.SizeofInotifyEvent + nameLen
			if mask&unix.IN_Q_OVERFLOW != 0 {
				for _, s := range w.subs {
					for ww := range s {
						ww.notify()
					}
				}
				continue
			}
			for ww := range w.subs[wd] {
				ww.notify()
			}
		}
		w.mu.Unlock()
	}
}

// close stops the reading goroutine and closes the inotify descriptor.
func (w *watcher) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	_ = w.file.Close()
	<-w.done
}
