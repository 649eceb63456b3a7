package lockengine

import "sort"

// Snapshot implements Engine.
func (q *Queue) Snapshot() []LockInfo {
	q.mu.Lock()
	es := make([]*entry, 0, len(q.entries))
	for _, e := range q.entries {
		es = append(es, e)
	}
	q.mu.Unlock()

	infos := make([]LockInfo, 0, len(es))
	for _, e := range es {
		if info, ok := e.info(); ok {
			infos = append(infos, info)
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos
}

// Inspect implements Engine.
func (q *Queue) Inspect(name string) (LockInfo, bool) {
	q.mu.Lock()
	e := q.entries[name]
	q.mu.Unlock()
	if e == nil {
		return LockInfo{}, false
	}
	return e.info()
}

// info describes e; ok is false when nothing holds or waits for it.
func (e *entry) info() (info LockInfo, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	info = LockInfo{Name: e.name, Waiters: len(e.waiters)}
	for _, w := range e.waiters {
		info.Waiting = append(info.Waiting, w.owner)
	}
	if g := e.group; g != nil {
		info.State = StateHeld
		info.Mode, info.Holders, info.Token, info.Since = g.mode, g.leases.n, g.token, g.since.Time()
		info.Heartbeat = info.Since
		if hb, ok := g.hold.(HeartbeatReporter); ok {
			if t := hb.LastHeartbeat(); t.After(info.Heartbeat) {
				info.Heartbeat = t
			}
		}
		info.Leases = g.leases.infos(info.Leases, false)
	}
	for _, g := range e.lost {
		if info.State == StateNone {
			info.State, info.Mode, info.Token, info.Since = StateLost, g.mode, g.token, g.since.Time()
			info.LostCause = g.lostErr.Error()
		}
		info.Leases = g.leases.infos(info.Leases, true)
	}
	if info.State == StateNone && info.Waiters > 0 {
		info.State = StateWaiting
	}
	return info, info.State != StateNone
}

func (ll *leaseList) infos(dst []LeaseInfo, lost bool) []LeaseInfo {
	for l := ll.head; l != nil; l = l.next {
		dst = append(dst, LeaseInfo{Owner: l.owner, Mode: l.mode, Token: l.token, Granted: l.granted.Time(), Lost: lost})
	}
	return dst
}
