package etcdlock

import "sync"

// slots hands out, per lock name, the smallest slot number not in use by
// a request of the session. Request keys are named after their slot, so a
// name's keys are reused from one request to the next (etcd's index would
// otherwise keep one entry per request ever made until compaction, and
// every range over the queue would walk them all), while requests in
// progress at the same time still have keys of their own.
//
// A slot is given back only when nothing can touch its key any more: the
// request is unlocked, lost, or its key was deleted by a delete conditional
// on its create revision, so a late delete can never hit a later request's
// key. A request whose creation timed out keeps its slot while reap may
// still delete whatever appears under its key.
type slots struct {
	mu   sync.Mutex
	used map[string]map[uint32]struct{} // guarded by mu; names with no slots in use are absent
}

// get returns the smallest free slot of name and marks it used.
func (t *slots) get(name string) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.used == nil {
		t.used = make(map[string]map[uint32]struct{})
	}
	u := t.used[name]
	if u == nil {
		u = make(map[uint32]struct{}, 1)
		t.used[name] = u
	}
	var n uint32
	for {
		if _, ok := u[n]; !ok {
			break
		}
		n++
	}
	u[n] = struct{}{}
	return n
}

// put gives slot n of name back.
func (t *slots) put(name string, n uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	u := t.used[name]
	delete(u, n)
	if len(u) == 0 {
		delete(t.used, name)
	}
}
