package enginetest

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lockfs/lockfs/lockengine"
)

// The reference model. A history is checked with conservative intervals:
// a lease counts as held from the event recorded after its grant returned
// (or after the Slot call that produced it) until the event recorded
// before its Release was called (or before the Slot call that gave it
// back). A lease that ended lost stops counting at the earliest moment its
// loss can have happened: the start of the Break (in its engine) or of the
// injected loss (of its name) that caused it; and, since a store that
// takes a grant away lets another engine in before the holder can notice,
// every lease stops counting when an injected loss of its name begins.
// Intervals so computed are inside the true ones, so an overlap between
// them is a real violation, never an artefact of observation order.

// violation is one broken rule; from and to are the seqs of the events
// that show it.
type violation struct {
	name     string
	from, to int64
	msg      string
}

type mReq struct {
	start event
	end   *event
	lease int
}

type mLease struct {
	id        int
	grant     event
	reqStart  int64
	relCall   int64 // seq of the Release call or of the Slot call that gave it back; -1 if none
	relDone   int64 // seq of Release's return or of the drop; -1 if none
	lostSeen  int64 // -1 if never seen lost
	lostErr   error
	start     int64 // interval, [start, end)
	end       int64
	finalErr  error
	doneShut  bool
	relErr    error
	timedCtx  bool // the request had a deadline or was cancelled
	slotGrant bool
}

type mCall struct {
	call, done event
	ok         bool
	// settle, for an injected loss: the first seq after it when no lease
	// of the name was held (in the test's view) and no Break's hidden
	// lock-delay hold may have been left. Until then an engine may
	// still grant under a hold the store no longer backs (a semaphore's
	// join, a stale descriptor), so the model trusts nothing in between.
	settle int64
}

type engName struct {
	eng  int
	name string
}

// model is a history digested for the checks.
type model struct {
	events   []event
	reqs     map[int]*mReq
	leases   map[int]*mLease
	byName   map[string][]*mLease // sorted by grant seq
	breaks   map[engName][]*mCall
	limits   map[engName][]*mCall
	inject   map[string][]*mCall
	ctxEnded map[int]event
	vs       []violation
}

func (m *model) fail(name string, from, to int64, format string, args ...any) {
	if from > to {
		from, to = to, from
	}
	m.vs = append(m.vs, violation{name: name, from: from, to: to, msg: fmt.Sprintf(format, args...)})
}

func isCtxOp(op string) bool {
	return strings.Contains(op, "(timeout)") || strings.Contains(op, "(cancel)")
}

// waitsForever reports whether op is a blocking request whose deadline is
// the suite's Timeout: it must be granted.
func waitsForever(op string) bool {
	return op == "Acquire" || op == "final Acquire" || op == "Slot.Lock(wait)"
}

// checkHistory checks h against the model and returns the violations.
// orders are pairs of request ids seen queued in that order in one engine.
func checkHistory(events []event, orders map[[2]int]bool, leases map[int]*lockengine.Lease) []violation {
	m := &model{events: events, reqs: map[int]*mReq{}, leases: map[int]*mLease{},
		byName: map[string][]*mLease{}, breaks: map[engName][]*mCall{}, limits: map[engName][]*mCall{},
		inject: map[string][]*mCall{}, ctxEnded: map[int]event{}}
	m.digest(leases)
	m.checkCalls()
	m.checkEnds()
	m.checkExclusion()
	m.checkTokens()
	m.checkFIFO(orders)
	m.checkLockDelay()
	sort.SliceStable(m.vs, func(i, j int) bool { return m.vs[i].to < m.vs[j].to })
	return m.vs
}

func (m *model) digest(leases map[int]*lockengine.Lease) {
	open := map[int]*mCall{} // by goroutine: the Break, SetLimit or loss in progress
	for _, e := range m.events {
		switch e.kind {
		case evStart:
			m.reqs[e.req] = &mReq{start: e}
		case evRefused, evCtxErr, evFailed, evSlotDone:
			if r := m.reqs[e.req]; r != nil && r.end == nil {
				r.end = &e
			}
		case evGrant:
			r := m.reqs[e.req]
			l := &mLease{id: e.lease, grant: e, reqStart: r.start.seq, relCall: -1, relDone: -1, lostSeen: -1,
				timedCtx: isCtxOp(r.start.op), slotGrant: strings.HasPrefix(e.op, "Slot")}
			if !l.slotGrant {
				r.end = &e
			}
			r.lease = e.lease
			m.leases[e.lease] = l
			m.byName[e.name] = append(m.byName[e.name], l)
		case evRelCall:
			m.leases[e.lease].relCall = e.seq
		case evRelDone:
			l := m.leases[e.lease]
			l.relDone, l.relErr = e.seq, e.err
		case evDropped:
			l := m.leases[e.lease]
			l.relCall, l.relDone = e.ref, e.seq
		case evLostSeen:
			l := m.leases[e.lease]
			l.lostSeen, l.lostErr = e.seq, e.err
		case evCtxEnded:
			if _, ok := m.ctxEnded[e.req]; !ok {
				m.ctxEnded[e.req] = e
			}
		case evBreakCall, evLimitCall, evLoseCall:
			open[e.g] = &mCall{call: e}
		case evBreakDone, evLimitDone, evLoseDone:
			c := open[e.g]
			delete(open, e.g)
			c.done, c.ok = e, e.err == nil
			switch e.kind {
			case evBreakDone:
				c.ok = c.ok && e.op == "broken"
				k := engName{e.eng, e.name}
				m.breaks[k] = append(m.breaks[k], c)
			case evLimitDone:
				k := engName{e.eng, e.name}
				m.limits[k] = append(m.limits[k], c)
			default:
				m.inject[e.name] = append(m.inject[e.name], c)
			}
		}
	}
	m.settleInjections()
	for id, l := range m.leases {
		ll := leases[id]
		select {
		case <-ll.Done():
			l.doneShut = true
		default:
		}
		l.finalErr = ll.Err()
	}
}

// breakHolding reports whether a hold that Break keeps for the lock-delay,
// which the test cannot see, may still be there at t: a successful Break
// of name began less than twice the lock-delay before (its own request
// may wait for other holders before it holds for the delay).
func (m *model) breakHolding(name string, t time.Time) bool {
	for k, cs := range m.breaks {
		if k.name != name {
			continue
		}
		for _, c := range cs {
			if c.ok && !c.call.at.After(t) && t.Sub(c.call.at) < 2*LockDelay {
				return true
			}
		}
	}
	return false
}

func (m *model) settleInjections() {
	for name, cs := range m.inject {
		free := freePoints(m.events, name)
		for _, c := range cs {
			c.settle = int64(len(m.events))
			for _, f := range free {
				if f.seq >= c.done.seq && !m.breakHolding(name, f.at) {
					c.settle = f.seq
					break
				}
			}
		}
	}
}

// freePoints returns the events after which nothing of name was held (in
// the test's view) nor any call of name in progress.
func freePoints(events []event, name string) []event {
	busy := map[int]bool{} // goroutines with a call of the name in progress
	live := map[int]bool{} // leases of the name not yet given back
	var free []event
	for _, e := range events {
		if e.name != name {
			continue
		}
		switch e.kind {
		case evStart, evBreakCall, evLimitCall, evLoseCall, evRelCall:
			busy[e.g] = true
		case evRefused, evCtxErr, evFailed, evSlotDone, evBreakDone, evLimitDone, evLoseDone:
			delete(busy, e.g)
		case evGrant:
			live[e.lease] = true
			if !strings.HasPrefix(e.op, "Slot") {
				delete(busy, e.g)
			}
		case evRelDone:
			delete(busy, e.g)
			delete(live, e.lease)
		case evDropped:
			delete(live, e.lease)
		}
		if len(busy) == 0 && len(live) == 0 {
			free = append(free, e)
		}
	}
	return free
}

// checkCalls: every call ended as the contract allows.
func (m *model) checkCalls() {
	for _, r := range m.reqs {
		if r.end == nil {
			m.fail(r.start.name, r.start.seq, r.start.seq, "request %d never returned", r.start.req)
			continue
		}
		switch r.end.kind {
		case evFailed:
			m.fail(r.start.name, r.start.seq, r.end.seq, "request %d failed: %v", r.start.req, r.end.err)
		case evCtxErr:
			if waitsForever(r.start.op) {
				m.fail(r.start.name, r.start.seq, r.end.seq,
					"blocking %s request %d was not granted within %v (starved or left waiting): %v",
					r.start.mode, r.start.req, Timeout, r.end.err)
			}
		case evGrant:
			// A grant made after the request's context had ended must
			// have been undone: the caller must have seen an error.
			l := m.leases[r.lease]
			if ce, ok := m.ctxEnded[r.start.req]; ok && l.timedCtx && l.grant.granted.After(ce.at) {
				m.fail(r.start.name, r.start.seq, r.end.seq,
					"request %d was granted lease %d %v after its context ended (#%d), and the grant was not undone",
					r.start.req, l.id, l.grant.granted.Sub(ce.at), ce.seq)
			}
		}
	}
	for k, cs := range m.breaks {
		for _, c := range cs {
			if c.done.err != nil {
				m.fail(k.name, c.call.seq, c.done.seq, "Break failed: %v", c.done.err)
			}
		}
	}
	for k, cs := range m.limits {
		for _, c := range cs {
			if c.done.err != nil {
				m.fail(k.name, c.call.seq, c.done.seq, "SetLimit(%d) failed: %v", c.call.n, c.done.err)
			}
		}
	}
}

// lossCause returns the earliest start of a Break (in l's engine) or of an
// injected loss (of l's name) that can have ended l, or -1.
func (m *model) lossCause(l *mLease, broken bool) int64 {
	seen := l.relDone
	if l.lostSeen >= 0 && (seen < 0 || l.lostSeen < seen) {
		seen = l.lostSeen
	}
	var calls []*mCall
	if broken {
		calls = m.breaks[engName{l.grant.eng, l.grant.name}]
	} else {
		calls = m.inject[l.grant.name]
	}
	for _, c := range calls {
		// An injected loss reaches the leases granted until it settled:
		// they may have joined a hold that the store no longer backs.
		if (!broken || c.ok) && c.call.seq < seen && (c.done.seq > l.reqStart || (!broken && c.settle > l.reqStart)) {
			return c.call.seq
		}
	}
	return -1
}

// checkEnds: every grant ends exactly once, released or lost, and a lost
// one for a reason; it also computes each lease's interval.
func (m *model) checkEnds() {
	for _, l := range m.leases {
		name := l.grant.name
		l.start, l.end = l.grant.seq, l.relCall
		switch {
		case l.relCall < 0:
			m.fail(name, l.grant.seq, l.grant.seq, "lease %d was never given back (test bug)", l.id)
			l.end = int64(len(m.events))
		case !l.doneShut:
			m.fail(name, l.grant.seq, l.relDone, "lease %d: Done not closed after Release", l.id)
		}
		rel := errors.Is(l.finalErr, lockengine.ErrReleased)
		lost := errors.Is(l.finalErr, lockengine.ErrLost)
		switch {
		case rel == lost:
			m.fail(name, l.grant.seq, l.relDone, "lease %d ended with %v: want exactly one of released or lost", l.id, l.finalErr)
		case l.lostSeen >= 0 && rel:
			m.fail(name, l.lostSeen, l.relDone, "lease %d was seen lost (%v) but ended released", l.id, l.lostErr)
		case lost:
			broken := errors.Is(l.finalErr, lockengine.ErrBroken)
			c := m.lossCause(l, broken)
			if c < 0 {
				m.fail(name, l.grant.seq, max(l.lostSeen, l.relDone), "lease %d lost with no Break or injected loss to cause it: %v", l.id, l.finalErr)
			} else {
				l.end = min(l.end, c)
			}
		}
		if l.relErr != nil && len(m.inject[name]) == 0 {
			m.fail(name, l.relCall, l.relDone, "Release of lease %d: %v", l.id, l.relErr)
		}
		for _, c := range m.inject[name] {
			if c.settle > l.reqStart && c.call.seq < l.end {
				l.end = c.call.seq
			}
		}
	}
}

// limitBound is the highest limit that can have been in effect for
// (eng, name) at some moment in [from, to]: the value of every SetLimit
// not yet certainly overwritten at from, and of every SetLimit in
// progress during the window.
func (m *model) limitBound(k engName, from, to int64) int {
	calls := m.limits[k]
	bound := 0
	doneBefore := false
	for _, c := range calls {
		if !c.ok {
			continue
		}
		switch {
		case c.done.seq < from:
			doneBefore = true
			overwritten := false
			for _, d := range calls {
				if d.ok && d.call.seq > c.done.seq && d.done.seq < from {
					overwritten = true
					break
				}
			}
			if !overwritten {
				bound = max(bound, c.call.n)
			}
		case c.call.seq < to:
			bound = max(bound, c.call.n)
		}
	}
	if !doneBefore {
		bound = max(bound, 1)
	}
	return bound
}

// checkExclusion sweeps the intervals of each name: shared only with
// shared; exclusive holders in one engine at a time and no more than the
// limit allows.
func (m *model) checkExclusion() {
	for name, ls := range m.byName {
		var active []*mLease
		for _, l := range ls { // sorted by start (grant seq)
			if l.end <= l.start {
				continue
			}
			kept := active[:0]
			for _, a := range active {
				if a.end > l.start {
					kept = append(kept, a)
				}
			}
			active = kept
			var excl []*mLease
			for _, a := range active {
				switch {
				case a.grant.mode != l.grant.mode:
					m.fail(name, min(a.start, l.start), l.start,
						"lease %d (%s, engine %c) granted while lease %d (%s, engine %c) was held",
						l.id, l.grant.mode, 'a'+l.grant.eng, a.id, a.grant.mode, 'a'+a.grant.eng)
				case l.grant.mode == lockengine.Exclusive && a.grant.eng != l.grant.eng:
					m.fail(name, a.start, l.start,
						"exclusive lease %d in engine %c granted while exclusive lease %d was held in engine %c",
						l.id, 'a'+l.grant.eng, a.id, 'a'+a.grant.eng)
				case l.grant.mode == lockengine.Exclusive:
					excl = append(excl, a)
				}
			}
			if l.grant.mode == lockengine.Exclusive && len(excl) > 0 {
				from := l.reqStart
				for _, a := range excl {
					from = min(from, a.reqStart)
				}
				if n := m.limitBound(engName{l.grant.eng, name}, from, l.start); len(excl)+1 > n {
					ids := []string{}
					for _, a := range excl {
						ids = append(ids, fmt.Sprint(a.id))
					}
					m.fail(name, from, l.start,
						"%d exclusive holders at once in engine %c (leases %s and %d), but the limit was at most %d",
						len(excl)+1, 'a'+l.grant.eng, strings.Join(ids, ","), l.id, n)
				}
			}
			active = append(active, l)
		}
	}
}

// injectedBetween reports whether a loss of name was injected (in part)
// between the seqs from and to.
func (m *model) injectedBetween(name string, from, to int64) bool {
	for _, c := range m.inject[name] {
		if c.settle > from && c.call.seq < to {
			return true
		}
	}
	return false
}

// checkTokens: a grant observed before another request started carries a
// token no greater than that request's grant; strictly smaller when the
// later grant is exclusive. Two shared grants are not compared: a shared
// lease joining its engine's group keeps the group's token, which may be
// older than another engine's shared grant (etcd). A downgraded lease keeps its token and is
// exempt as the later grant. Grants on either side of an injected loss
// are not compared: a lock file removed behind the backend's back takes
// its record with it (the dir backend keeps a token floor only across
// the removals it makes itself).
func (m *model) checkTokens() {
	for name, ls := range m.byName {
		for _, l2 := range ls {
			if l2.grant.downgrade {
				continue
			}
			for _, l1 := range ls {
				if l1.grant.seq >= l2.reqStart {
					break // sorted by grant seq
				}
				if m.injectedBetween(name, l1.reqStart, l2.grant.seq) {
					continue
				}
				t1, t2 := l1.grant.token, l2.grant.token
				if l1.grant.mode == lockengine.Shared && l2.grant.mode == lockengine.Shared {
					continue // the contract orders shared tokens only against exclusive ones
				}
				if t2 < t1 || (t2 == t1 && l2.grant.mode == lockengine.Exclusive) {
					m.fail(name, l1.grant.seq, l2.grant.seq,
						"token of lease %d (%s) is %d, not above the token %d of lease %d (%s) granted before it was requested",
						l2.id, l2.grant.mode, t2, t1, l1.id, l1.grant.mode)
				}
			}
		}
	}
}

// checkFIFO: of two requests seen queued one behind the other in an
// engine, the later is not granted before the earlier (Lease.Granted is
// taken under the engine's lock, so it orders the grants of a name).
func (m *model) checkFIFO(orders map[[2]int]bool) {
	for p := range orders {
		ra, rb := m.reqs[p[0]], m.reqs[p[1]]
		if ra == nil || rb == nil || ra.lease == 0 || rb.lease == 0 {
			continue
		}
		la, lb := m.leases[ra.lease], m.leases[rb.lease]
		if la.grant.eng != lb.grant.eng || la.grant.name != lb.grant.name {
			continue
		}
		if lb.grant.granted.Before(la.grant.granted) {
			m.fail(la.grant.name, min(ra.start.seq, rb.start.seq), max(la.grant.seq, lb.grant.seq),
				"request %d was seen queued behind request %d in engine %c but was granted %v earlier",
				p[1], p[0], 'a'+la.grant.eng, la.grant.granted.Sub(lb.grant.granted))
		}
	}
}

// checkLockDelay: after a Break returned, its engine grants the name to
// nobody until the lock-delay has passed since the Break began, unless a
// loss of the name was injected meanwhile.
func (m *model) checkLockDelay() {
	for k, cs := range m.breaks {
		for _, c := range cs {
			if !c.ok {
				continue
			}
			until := c.call.at.Add(LockDelay)
			for _, l := range m.byName[k.name] {
				g := l.grant.granted
				if l.grant.eng != k.eng || !g.After(c.done.at) || !g.Before(until) || l.grant.downgrade {
					continue
				}
				injected := false
				for _, in := range m.inject[k.name] {
					if in.call.seq < l.grant.seq && in.settle > c.call.seq {
						injected = true
					}
				}
				if !injected {
					n := m.limitBound(k, c.call.seq, l.grant.seq)
					m.fail(k.name, c.call.seq, l.grant.seq,
						"lease %d granted in engine %c %v after the Break began, within the lock-delay %v (limit up to %d)",
						l.id, 'a'+k.eng, g.Sub(c.call.at).Round(time.Microsecond), LockDelay, n)
				}
			}
		}
	}
}

// minimise returns the events of v's name from the last moment before v
// when nothing of that name was held, requested or in progress, up to v's
// last event.
func minimise(events []event, v violation) string {
	lastFree := int64(-1)
	for _, f := range freePoints(events, v.name) {
		if f.seq >= v.from {
			break
		}
		lastFree = f.seq
	}
	var lines []string
	for _, e := range events {
		if e.seq > lastFree && e.seq <= v.to && e.name == v.name {
			lines = append(lines, "    "+e.String())
		}
	}
	const maxLines = 120
	head := fmt.Sprintf("  history of %q from #%d (last moment it was free) to #%d, %d events:", v.name, lastFree, v.to, len(lines))
	if len(lines) > maxLines {
		head += fmt.Sprintf(" (first %d left out)", len(lines)-maxLines)
		lines = lines[len(lines)-maxLines:]
	}
	return head + "\n" + strings.Join(lines, "\n")
}
