package enginetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

// ModelRandomHistory drives both engines of a factory with random
// operations from many goroutines, records what every call was seen to do
// in one history, and then checks the history against a reference model of
// the Engine contract (see checkHistory). The run is seeded: the seed comes
// from the clock unless LOCKFS_MODEL_SEED is set, and a failure prints it.
func init() {
	Cases["ModelRandomHistory"] = testModelRandomHistory
}

// SeedEnv names the environment variable that fixes the seed of
// ModelRandomHistory.
const SeedEnv = "LOCKFS_MODEL_SEED"

// HistoryEnv names a file to write the whole history of a
// ModelRandomHistory run to.
const HistoryEnv = "LOCKFS_MODEL_HISTORY"

// loseFuncs holds the loss injectors registered by factories, by test.
var loseFuncs sync.Map // *testing.T -> func(name string)

// RegisterLose lets a Factory offer a way to make the store take away the
// grant of name from whichever engine holds it (remove the lock file,
// delete the etcd key), so that the holder's leases end lost. Cases that
// inject losses look it up for the t the factory was called with; a
// factory that registers nothing gets no injected losses. lose must do
// nothing harmful when nobody holds name.
func RegisterLose(t *testing.T, lose func(name string)) {
	loseFuncs.Store(t, lose)
	t.Cleanup(func() { loseFuncs.Delete(t) })
}

func loseFor(t *testing.T) func(string) {
	if f, ok := loseFuncs.Load(t); ok {
		return f.(func(string))
	}
	return nil
}

// Model run parameters: a few hundred operations on a few names, kept to
// a few seconds per backend.
const (
	modelGoroutines = 8
	modelOpsPerG    = 40
	modelNames      = 4
	modelMaxHeld    = 2 // direct leases a goroutine keeps at most
)

type evKind uint8

const (
	evStart    evKind = iota + 1 // a request starts (Acquire, TryAcquire, a Slot call)
	evGrant                      // a request returned a lease (or a Slot call left a new lease in its slot)
	evRefused                    // ErrWouldBlock
	evCtxErr                     // the request ended with its context
	evFailed                     // any other error
	evSlotDone                   // a Slot call ended without a new lease
	evCtxEnded                   // a request's context ended (recorded after Done closed)
	evRelCall                    // Release is about to be called
	evRelDone                    // Release returned
	evDropped                    // a Slot call gave a lease back (ref: the seq of that call's start)
	evLostSeen                   // a lease's Done closed with an error wrapping ErrLost
	evBreakCall
	evBreakDone
	evLimitCall
	evLimitDone
	evLoseCall
	evLoseDone
)

var evNames = map[evKind]string{
	evStart: "start", evGrant: "GRANT", evRefused: "would-block", evCtxErr: "ctx-err",
	evFailed: "FAILED", evSlotDone: "slot-done", evCtxEnded: "ctx-ended",
	evRelCall: "release-call", evRelDone: "released", evDropped: "slot-dropped",
	evLostSeen: "LOST", evBreakCall: "break-call", evBreakDone: "break-done",
	evLimitCall: "setlimit-call", evLimitDone: "setlimit-done",
	evLoseCall: "lose-call", evLoseDone: "lose-done",
}

// event is one observation. seq orders all events of a run; at is the
// clock reading taken under the same mutex, so both orders agree.
type event struct {
	seq   int64
	at    time.Time
	kind  evKind
	g     int // goroutine; -1 for watchers and the final phase
	eng   int // 0 = a, 1 = b; -1 when not about one engine
	name  string
	op    string // the call
	mode  lockengine.Mode
	req   int // request id (the PID of the request's owner)
	lease int // lease id
	token uint64
	// granted is Lease.Granted() of a grant: when the engine granted it,
	// under its lock.
	granted   time.Time
	downgrade bool  // a grant that may be a Slot downgrade (keeps the token)
	n         int   // SetLimit's limit
	ref       int64 // evDropped: the seq of the Slot call's start
	err       error
}

func (e event) String() string {
	s := fmt.Sprintf("#%-5d g%-2d", e.seq, e.g)
	if e.eng >= 0 {
		s += " " + string(rune('a'+e.eng))
	} else {
		s += " -"
	}
	s += fmt.Sprintf(" %-4s %-13s", e.name, evNames[e.kind])
	if e.op != "" {
		s += " " + e.op
	}
	if e.mode != 0 {
		s += " " + e.mode.String()
	}
	if e.req != 0 {
		s += fmt.Sprintf(" req=%d", e.req)
	}
	if e.lease != 0 {
		s += fmt.Sprintf(" lease=%d", e.lease)
	}
	if e.kind == evGrant {
		s += fmt.Sprintf(" token=%d", e.token)
		if e.downgrade {
			s += " (downgrade?)"
		}
	}
	if e.kind == evLimitCall {
		s += fmt.Sprintf(" n=%d", e.n)
	}
	if e.kind == evDropped {
		s += fmt.Sprintf(" (from #%d)", e.ref)
	}
	if e.err != nil {
		s += " err=" + e.err.Error()
	}
	return s
}

// history is the event log of one run.
type history struct {
	mu     sync.Mutex
	events []event

	reqs, leases atomic.Int64 // id sources

	lmu     sync.Mutex
	byLease map[int]*lockengine.Lease // every lease granted, for the final checks
}

func (h *history) add(e event) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.seq = int64(len(h.events))
	e.at = time.Now()
	h.events = append(h.events, e)
	return e.seq
}

type modelRun struct {
	engs  [2]lockengine.Engine
	names []string
	lose  func(string)
	h     *history
	// watchers wait for the Done of every lease; ctxWatch for the
	// context-ended callbacks.
	watchers sync.WaitGroup
	ctxWatch sync.WaitGroup
}

func modelSeed(t *testing.T) uint64 {
	if s := os.Getenv(SeedEnv); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "%s=%q", SeedEnv, s)
		return n
	}
	return uint64(time.Now().UnixNano())
}

func testModelRandomHistory(t *testing.T, f Factory) {
	seed := modelSeed(t)
	a, b := f(t)
	m := &modelRun{engs: [2]lockengine.Engine{a, b}, lose: loseFor(t),
		h: &history{byLease: make(map[int]*lockengine.Lease)}}
	for i := range modelNames {
		m.names = append(m.names, fmt.Sprintf("m%d", i))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d; rerun with: %s=%d go test -race -run 'Conformance/ModelRandomHistory' ./lockengine/...",
				seed, SeedEnv, seed)
		}
	})

	// The queue orders seen by Inspect, for the FIFO check.
	orders := newOrderLog()
	stop := make(chan struct{})
	var snapWG sync.WaitGroup
	snapWG.Add(1)
	go func() {
		defer snapWG.Done()
		m.watchQueues(orders, stop)
	}()

	start := time.Now()
	var wg sync.WaitGroup
	for g := range modelGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.worker(g, rand.New(rand.NewPCG(seed, uint64(g)+1)))
		}()
	}
	wg.Wait()
	close(stop)
	snapWG.Wait()

	// Liveness: once the random phase is over, a blocking exclusive
	// request of every name is granted in every engine (nothing was left
	// behind by cancelled or failed requests; no waiter starves).
	// They run at once, so that a name left held costs one Timeout.
	for eng := range m.engs {
		for i, name := range m.names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g := -1 - (eng*len(m.names) + i)
				if l, id := m.acquire(g, eng, name, lockengine.Exclusive, "final Acquire", ctxOnly(Timeout)); l != nil {
					m.release(g, eng, l, id)
				}
			}()
		}
	}
	wg.Wait()
	m.ctxWatch.Wait()
	// Leases left unreleased (an engine bug) keep their watchers: give
	// them a moment, then check the history without them.
	watched := make(chan struct{})
	go func() { m.watchers.Wait(); close(watched) }()
	select {
	case <-watched:
	case <-time.After(time.Second):
	}
	m.h.mu.Lock() // the watchers still running may add events
	events := append([]event(nil), m.h.events...)
	m.h.mu.Unlock()
	defer func() {
		for eng, e := range m.engs {
			waitFor(t, fmt.Sprintf("engine %c empty", 'a'+eng), func() bool { return len(e.Snapshot()) == 0 })
		}
	}()
	t.Logf("seed %d: %d events in %v (loss injection: %v)", seed, len(events), time.Since(start).Round(time.Millisecond), m.lose != nil)

	if path := os.Getenv(HistoryEnv); path != "" {
		var b strings.Builder
		for _, e := range events {
			b.WriteString(e.String() + "\n")
		}
		require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
	}
	failed := 0
	for _, v := range checkHistory(events, orders.pairs(), m.h.byLease) {
		if failed++; failed > 5 {
			t.Errorf("... and more violations")
			break
		}
		t.Errorf("model violation: %s\n%s", v.msg, minimise(events, v))
	}
}

// ctxOnly returns a maker of contexts with timeout d.
func ctxOnly(d time.Duration) func() (context.Context, context.CancelFunc) {
	return func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d)
	}
}

// orderLog collects pairs of requests seen queued one before the other in
// one engine (a request id is unique, so the pair names the engine and the
// name too).
type orderLog struct {
	seen map[[2]int]bool
}

func newOrderLog() *orderLog { return &orderLog{seen: make(map[[2]int]bool)} }

func (o *orderLog) pairs() map[[2]int]bool { return o.seen }

func (m *modelRun) watchQueues(o *orderLog, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(200 * time.Microsecond):
		}
		for _, e := range m.engs {
			for _, name := range m.names {
				info, ok := e.Inspect(name)
				if !ok || len(info.Waiting) < 2 {
					continue
				}
				var ids []int
				for _, w := range info.Waiting {
					if w.PID != 0 { // 0: the engine's own request (Break)
						ids = append(ids, int(w.PID))
					}
				}
				for i := range ids {
					for j := i + 1; j < len(ids); j++ {
						o.seen[[2]int{ids[i], ids[j]}] = true
					}
				}
			}
		}
	}
}

// owned returns ctx carrying a fresh request id as the owner's PID.
func (m *modelRun) owned(ctx context.Context) (context.Context, int) {
	id := int(m.h.reqs.Add(1))
	return lockengine.WithOwner(ctx, lockengine.Owner{UID: 1000, GID: 1000, PID: uint32(id)}), id
}

// watchCtx records when ctx ends, after its Done closed.
func (m *modelRun) watchCtx(ctx context.Context, g, eng int, name string, req int) {
	m.ctxWatch.Add(1)
	context.AfterFunc(ctx, func() {
		defer m.ctxWatch.Done()
		m.h.add(event{kind: evCtxEnded, g: g, eng: eng, name: name, req: req})
	})
}

// granted records a new lease and starts watching it for loss.
func (m *modelRun) granted(g, eng int, name, op string, req int, l *lockengine.Lease, downgrade bool) int {
	id := int(m.h.leases.Add(1))
	m.h.lmu.Lock()
	m.h.byLease[id] = l
	m.h.lmu.Unlock()
	m.h.add(event{kind: evGrant, g: g, eng: eng, name: name, op: op, mode: l.Mode(), req: req,
		lease: id, token: l.Token(), granted: l.Granted(), downgrade: downgrade})
	m.watchers.Add(1)
	go func() {
		defer m.watchers.Done()
		<-l.Done()
		if err := l.Err(); errors.Is(err, lockengine.ErrLost) {
			m.h.add(event{kind: evLostSeen, g: -1, eng: eng, name: name, lease: id, err: err})
		}
	}()
	return id
}

// acquire runs one Acquire (or TryAcquire, when mk is nil) and records it.
func (m *modelRun) acquire(g, eng int, name string, mode lockengine.Mode, op string,
	mk func() (context.Context, context.CancelFunc)) (*lockengine.Lease, int) {
	var (
		ctx    context.Context
		cancel context.CancelFunc = func() {}
	)
	if mk != nil {
		ctx, cancel = mk()
	} else {
		ctx = context.Background()
	}
	defer cancel()
	ctx, req := m.owned(ctx)
	if mk != nil {
		m.watchCtx(ctx, g, eng, name, req)
	}
	m.h.add(event{kind: evStart, g: g, eng: eng, name: name, op: op, mode: mode, req: req})
	var (
		l   *lockengine.Lease
		err error
	)
	if mk == nil {
		l, err = m.engs[eng].TryAcquire(ctx, name, mode)
	} else {
		l, err = m.engs[eng].Acquire(ctx, name, mode)
	}
	switch {
	case err == nil:
		return l, m.granted(g, eng, name, op, req, l, false)
	case errors.Is(err, lockengine.ErrWouldBlock) && mk == nil:
		m.h.add(event{kind: evRefused, g: g, eng: eng, name: name, op: op, req: req, err: err})
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		m.h.add(event{kind: evCtxErr, g: g, eng: eng, name: name, op: op, req: req, err: err})
	default:
		m.h.add(event{kind: evFailed, g: g, eng: eng, name: name, op: op, req: req, err: err})
	}
	return nil, 0
}

func (m *modelRun) release(g, eng int, l *lockengine.Lease, id int) {
	m.h.add(event{kind: evRelCall, g: g, eng: eng, name: l.Name(), lease: id})
	err := l.Release()
	m.h.add(event{kind: evRelDone, g: g, eng: eng, name: l.Name(), lease: id, err: err})
}

type heldLease struct {
	l       *lockengine.Lease
	eng, id int
}

// slotState is one goroutine's Slot for one name, and the id of the lease
// it was last seen holding.
type slotState struct {
	s   *lockengine.Slot
	eng int
	cur *lockengine.Lease
	id  int
}

// slotCall runs one Slot call and records its effect on the slot's lease:
// a lease given back ends at the call's start, a new one starts at its
// return.
func (m *modelRun) slotCall(g int, ss *slotState, op string, mode lockengine.Mode,
	mk func() (context.Context, context.CancelFunc), call func(ctx context.Context) error) {
	name := ss.s.Name()
	var (
		ctx    context.Context
		cancel context.CancelFunc = func() {}
	)
	if mk != nil {
		ctx, cancel = mk()
	} else {
		ctx = context.Background()
	}
	defer cancel()
	ctx, req := m.owned(ctx)
	startSeq := m.h.add(event{kind: evStart, g: g, eng: ss.eng, name: name, op: op, mode: mode, req: req})
	wasExclusive := ss.cur != nil && ss.cur.Mode() == lockengine.Exclusive && ss.cur.Err() == nil
	err := call(ctx)
	now := ss.s.Lease()
	if now != ss.cur {
		if ss.cur != nil {
			m.h.add(event{kind: evDropped, g: g, eng: ss.eng, name: name, lease: ss.id, ref: startSeq})
		}
		ss.cur, ss.id = now, 0
		if now != nil {
			down := wasExclusive && now.Mode() == lockengine.Shared
			ss.id = m.granted(g, ss.eng, name, op, req, now, down)
		}
	}
	switch {
	case err == nil:
		m.h.add(event{kind: evSlotDone, g: g, eng: ss.eng, name: name, op: op, req: req})
	case errors.Is(err, lockengine.ErrWouldBlock) && mk == nil:
		m.h.add(event{kind: evRefused, g: g, eng: ss.eng, name: name, op: op, req: req, err: err})
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		m.h.add(event{kind: evCtxErr, g: g, eng: ss.eng, name: name, op: op, req: req, err: err})
	default:
		m.h.add(event{kind: evFailed, g: g, eng: ss.eng, name: name, op: op, req: req, err: err})
	}
}

// shortTimeout is the deadline of the timed requests: often too short.
func shortTimeout(r *rand.Rand) func() (context.Context, context.CancelFunc) {
	return ctxOnly(time.Duration(50+r.IntN(3000)) * time.Microsecond)
}

// worker runs one goroutine's random operations. A goroutine makes a
// blocking request without a deadline only while it holds nothing, so
// every holder keeps making progress and the run cannot deadlock.
func (m *modelRun) worker(g int, r *rand.Rand) {
	var held []heldLease
	slots := make([]*slotState, len(m.names))
	slotFor := func(i int) *slotState {
		if slots[i] == nil {
			eng := (g + i) % 2
			slots[i] = &slotState{s: lockengine.NewSlot(m.engs[eng], m.names[i], nil), eng: eng}
		}
		return slots[i]
	}
	holdsOther := func(except *slotState) bool {
		if len(held) > 0 {
			return true
		}
		for _, ss := range slots {
			if ss != nil && ss != except && ss.cur != nil {
				return true
			}
		}
		return false
	}
	releaseAt := func(i int) {
		h := held[i]
		held = append(held[:i], held[i+1:]...)
		m.release(g, h.eng, h.l, h.id)
	}
	for range modelOpsPerG {
		if len(held) > 0 && r.IntN(3) == 0 {
			releaseAt(r.IntN(len(held)))
			continue
		}
		eng := r.IntN(2)
		ni := r.IntN(len(m.names))
		name := m.names[ni]
		mode := lockengine.Exclusive
		if r.IntN(5) < 2 {
			mode = lockengine.Shared
		}
		keep := func(l *lockengine.Lease, id int) {
			if l != nil {
				held = append(held, heldLease{l, eng, id})
			}
		}
		switch p := r.IntN(100); {
		case p < 14:
			if holdsOther(nil) {
				keep(m.acquire(g, eng, name, mode, "Acquire(timeout)", shortTimeout(r)))
			} else {
				keep(m.acquire(g, eng, name, mode, "Acquire", ctxOnly(Timeout)))
			}
		case p < 28:
			keep(m.acquire(g, eng, name, mode, "TryAcquire", nil))
		case p < 40:
			keep(m.acquire(g, eng, name, mode, "Acquire(timeout)", shortTimeout(r)))
		case p < 47:
			after := time.Duration(r.IntN(2000)) * time.Microsecond
			keep(m.acquire(g, eng, name, mode, "Acquire(cancel)", func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				tm := time.AfterFunc(after, cancel)
				return ctx, func() { tm.Stop(); cancel() }
			}))
		case p < 49:
			m.h.add(event{kind: evBreakCall, g: g, eng: eng, name: name, op: "Break(root)"})
			err := m.engs[eng].Break(context.Background(), name, lockengine.Owner{UID: 0})
			switch {
			case errors.Is(err, lockengine.ErrNotHeld):
				err = nil
				m.h.add(event{kind: evBreakDone, g: g, eng: eng, name: name, op: "not held"})
			case errors.Is(err, lockengine.ErrLockDelay):
				// Already broken: a second break changes nothing.
				err = nil
				m.h.add(event{kind: evBreakDone, g: g, eng: eng, name: name, op: "in lock-delay"})
			default:
				m.h.add(event{kind: evBreakDone, g: g, eng: eng, name: name, op: "broken", err: err})
			}
		case p < 54:
			n := 1 + r.IntN(3)
			m.h.add(event{kind: evLimitCall, g: g, eng: eng, name: name, n: n})
			err := m.engs[eng].SetLimit(name, n)
			m.h.add(event{kind: evLimitDone, g: g, eng: eng, name: name, n: n, err: err})
		case p < 56:
			if m.lose != nil {
				m.h.add(event{kind: evLoseCall, g: g, eng: -1, name: name})
				m.lose(name)
				m.h.add(event{kind: evLoseDone, g: g, eng: -1, name: name})
			}
		case p < 82:
			ss := slotFor(ni)
			switch q := r.IntN(10); {
			case q < 3:
				m.slotCall(g, ss, "Slot.Lock(nowait)", mode, nil, func(ctx context.Context) error {
					return ss.s.Lock(ctx, mode, false)
				})
			case q < 5:
				mk := shortTimeout(r)
				op := "Slot.Lock(timeout)"
				if !holdsOther(ss) {
					mk, op = ctxOnly(Timeout), "Slot.Lock(wait)"
				}
				m.slotCall(g, ss, op, mode, mk, func(ctx context.Context) error {
					return ss.s.Lock(ctx, mode, true)
				})
			case q < 8:
				m.slotCall(g, ss, "Slot.TryLockKeep", mode, nil, func(ctx context.Context) error {
					return ss.s.TryLockKeep(ctx, mode)
				})
			default:
				m.slotCall(g, ss, "Slot.Unlock", 0, nil, func(ctx context.Context) error {
					return ss.s.Unlock(ctx)
				})
			}
		default:
			time.Sleep(time.Duration(r.IntN(800)) * time.Microsecond)
		}
		if len(held) > modelMaxHeld {
			releaseAt(0)
		}
	}
	for len(held) > 0 {
		releaseAt(len(held) - 1)
	}
	for _, ss := range slots {
		if ss != nil {
			m.slotCall(g, ss, "Slot.Close", 0, nil, func(context.Context) error { return ss.s.Close() })
		}
	}
}
