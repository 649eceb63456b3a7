package fsnode

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mapshrink"
	"github.com/lockfs/lockfs/lockengine"
)

// Per-user limits. lockfs runs as root with allow_other, so every user and
// container of the host shares one daemon; without limits one uid could
// take every descriptor of the daemon (held names, dir backend), all its
// memory (waiting requests, inodes of looked-up names), and lock everybody
// else out. Each uid therefore has three budgets:
//
//   - held: leases it holds (an open that took the lock, a flock or POSIX
//     lock taken by a lock call); a conversion of a lock it already holds
//     is free;
//   - waiting: requests it has blocked in open(2) or F_SETLKW/flock;
//   - names: lock files with a live inode (go-fuse node, kernel inode) that
//     it looked up or opened;
//   - dirs: lock directories it owns that were made through this daemon
//     since it started (mkdir counts for the creator, rmdir gives the
//     directory back to its owner, chown through this daemon moves it).
//     They are kept by the backend, so this bounds what one uid can make
//     the store keep; past it mkdir fails with EDQUOT, as on a filesystem
//     with quotas.
//
// A request past one of the first three budgets fails at once with ENOLCK ("no locks available")
// rather than EDQUOT: ENOLCK is what fcntl(2) and flock(2) document for
// "the lock table is full", so lock tools already report it sensibly, and
// EDQUOT would read as a disk quota to users of open(2). Root (uid 0) is
// exempt unless Limits.LimitRoot is set, so an administrator can always
// inspect, break and take locks.
//
// On top, the held leases of all uids together (root's included) count
// against Limits.HeldTotal, the daemon's descriptor budget (see
// cmd/lockfs): non-root requests past it fail with ENOLCK, root's still
// run on the reserve of descriptors kept above it.

// Limit names, as in the lockfs_limit_refusals_total{limit} metric.
const (
	LimitHeld    = "held"
	LimitWaiting = "waiting"
	LimitNames   = "names"
	LimitDirs    = "dirs"
)

// limitKinds index the refusal counters.
const (
	kindHeld = iota
	kindWaiting
	kindNames
	kindDirs
	numKinds
)

var limitLabels = [numKinds]string{LimitHeld, LimitWaiting, LimitNames, LimitDirs}

// refusalLogInterval is the least time between two log lines about the
// same uid and limit: a client looping on ENOLCK must not flood the log.
const refusalLogInterval = 10 * time.Second

// Limits are the per-user limits of a mount. Zero values mean unlimited.
type Limits struct {
	// HeldPerUser is the most leases one uid may hold.
	HeldPerUser int
	// WaitingPerUser is the most requests of one uid that may wait.
	WaitingPerUser int
	// NamesPerUser is the most lock files with a live inode one uid may
	// have looked up or opened.
	NamesPerUser int
	// DirsPerUser is the most lock directories one uid may own of those
	// made through this daemon (mkdir past it: EDQUOT).
	DirsPerUser int
	// HeldTotal is the most leases of all uids together beyond which
	// requests of exempt-less (non-root) uids are refused: the daemon's
	// descriptor budget minus a reserve for root.
	HeldTotal int
	// LimitRoot applies the per-user limits (not HeldTotal) to root too.
	LimitRoot bool
}

// userCount is what one uid uses.
type userCount struct {
	held, waiting, names, dirs int
}

// limiter does the accounting of Limits. A nil *limiter limits nothing.
type limiter struct {
	cfg Limits
	log *slog.Logger

	mu      sync.Mutex
	users   map[uint32]*userCount               // guarded by mu
	held    int                                 // guarded by mu; leases charged, all uids
	charged map[*lockengine.Slot]uint32         // guarded by mu; slot -> uid charged for its lease
	logged  map[refusalKey]time.Time            // guarded by mu; last log line per uid and limit
	names   map[countedNode]map[uint32]struct{} // guarded by mu; uids charged for each node
	refused [numKinds]atomic.Uint64             // refusals by kind

	// The largest lengths of charged and names since each was last
	// shrunk (mapshrink): maps never give back their buckets, and a burst
	// of 10,000 held names would otherwise stay in them. Guarded by mu.
	chargedPeak, namesPeak int
}

type refusalKey struct {
	uid  uint32
	kind int
}

func newLimiter(cfg Limits, lg *slog.Logger) *limiter {
	return &limiter{cfg: cfg, log: lg, users: make(map[uint32]*userCount),
		charged: make(map[*lockengine.Slot]uint32), logged: make(map[refusalKey]time.Time),
		names: make(map[countedNode]map[uint32]struct{})}
}

// callerUID returns the uid of the FUSE caller of ctx; ok is false when
// ctx carries none (a call from inside the daemon or a test).
func callerUID(ctx context.Context) (uid uint32, ok bool) {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return 0, false
	}
	return c.Uid, true
}

// exempt reports whether uid escapes the per-user limits.
func (l *limiter) exempt(uid uint32) bool { return uid == 0 && !l.cfg.LimitRoot }

// user returns uid's counts, creating them. Called with mu held.
func (l *limiter) user(uid uint32) *userCount {
	u := l.users[uid]
	if u == nil {
		u = &userCount{}
		l.users[uid] = u
	}
	return u
}

// tidy drops uid's counts when they are all zero. Called with mu held.
func (l *limiter) tidy(uid uint32) {
	if u := l.users[uid]; u != nil && *u == (userCount{}) {
		delete(l.users, uid)
	}
}

// refuse counts and (rate-limited) logs a refusal of uid by the limit of
// kind whose value is max, and returns the error to fail with: ENOLCK,
// EDQUOT for the directories limit. Called with mu held.
func (l *limiter) refuse(uid uint32, kind, max int, what string) error {
	errno := syscall.ENOLCK
	if kind == kindDirs {
		errno = syscall.EDQUOT
	}
	l.refused[kind].Add(1)
	key := refusalKey{uid, kind}
	now := time.Now()
	if last, ok := l.logged[key]; !ok || now.Sub(last) >= refusalLogInterval {
		if len(l.logged) > 4096 {
			clear(l.logged) // bounded; a burst of uids only costs log lines
		}
		l.logged[key] = now
		l.log.Warn("per-user limit reached: refusing", "uid", uid, "limit", limitLabels[kind],
			"max", max, "what", what, "errno", unix.ErrnoName(errno), "refused_total", l.refused[kind].Load())
	}
	return fmt.Errorf("uid %d: %s limit %d reached: %w", uid, what, max, errno)
}

// reserveHeld counts one more lease for the caller of ctx, or refuses it
// with ENOLCK. A successful reservation must end in commitHeld or
// unreserveHeld; ok is false when nothing was reserved (no limiter, or no
// caller).
func (l *limiter) reserveHeld(ctx context.Context) (uid uint32, ok bool, err error) {
	if l == nil {
		return 0, false, nil
	}
	uid, ok = callerUID(ctx)
	if !ok {
		return 0, false, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(uid)
	if !l.exempt(uid) && l.cfg.HeldPerUser > 0 && u.held >= l.cfg.HeldPerUser {
		l.tidy(uid)
		return 0, false, l.refuse(uid, kindHeld, l.cfg.HeldPerUser, "held locks per user")
	}
	if uid != 0 && l.cfg.HeldTotal > 0 && l.held >= l.cfg.HeldTotal {
		l.tidy(uid)
		return 0, false, l.refuse(uid, kindHeld, l.cfg.HeldTotal, "held locks of the daemon (descriptor reserve)")
	}
	u.held++
	l.held++
	return uid, true, nil
}

// unreserveHeld undoes a reservation that took no lease.
func (l *limiter) unreserveHeld(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropHeld(uid)
}

// dropHeld undoes one held count of uid. Called with mu held.
func (l *limiter) dropHeld(uid uint32) {
	if u := l.users[uid]; u != nil && u.held > 0 {
		u.held--
		l.held--
		l.tidy(uid)
	}
}

// settle reconciles slot with the accounting after a lock call of uid
// (reserved says whether that call reserved a lease): a slot that holds a
// lease is charged once, to its first taker; a slot that holds none is not
// charged. Nil-safe.
func (l *limiter) settle(slot *lockengine.Slot, uid uint32, reserved bool) {
	if l == nil {
		return
	}
	has := slot.Lease() != nil
	l.mu.Lock()
	defer l.mu.Unlock()
	owner, charged := l.charged[slot]
	switch {
	case has && !charged && reserved:
		l.charged[slot] = uid
		return
	case !has && charged:
		delete(l.charged, slot)
		l.charged = mapshrink.Shrink(l.charged, &l.chargedPeak)
		l.dropHeld(owner)
	}
	if reserved {
		l.dropHeld(uid)
	}
}

// isCharged reports whether slot's lease is counted already.
func (l *limiter) isCharged(slot *lockengine.Slot) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.charged[slot]
	return ok
}

// uncharge forgets slot (it was closed). Nil-safe.
func (l *limiter) uncharge(slot *lockengine.Slot) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if uid, ok := l.charged[slot]; ok {
		delete(l.charged, slot)
		l.charged = mapshrink.Shrink(l.charged, &l.chargedPeak)
		l.dropHeld(uid)
	}
}

// beginWait counts a request of the caller of ctx that is about to wait,
// or refuses it with ENOLCK. The returned function ends the wait.
func (l *limiter) beginWait(ctx context.Context) (end func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	uid, ok := callerUID(ctx)
	if !ok {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(uid)
	if !l.exempt(uid) && l.cfg.WaitingPerUser > 0 && u.waiting >= l.cfg.WaitingPerUser {
		l.tidy(uid)
		return nil, l.refuse(uid, kindWaiting, l.cfg.WaitingPerUser, "waiting lock requests per user")
	}
	u.waiting++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if u := l.users[uid]; u != nil && u.waiting > 0 {
			u.waiting--
			l.tidy(uid)
		}
	}, nil
}

// chargeName counts node n (a lock file, lock directory or view) for the
// caller of ctx, once per uid and inode, or refuses with ENOLCK. Exempt
// callers are not counted.
func (l *limiter) chargeName(ctx context.Context, n countedNode) error {
	if l == nil {
		return nil
	}
	uid, ok := callerUID(ctx)
	if !ok || l.exempt(uid) {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.names[n]
	if _, ok := set[uid]; ok {
		return nil
	}
	u := l.user(uid)
	if l.cfg.NamesPerUser > 0 && u.names >= l.cfg.NamesPerUser {
		l.tidy(uid)
		return l.refuse(uid, kindNames, l.cfg.NamesPerUser, "looked-up lock names per user")
	}
	if set == nil {
		set = make(map[uint32]struct{}, 1)
		l.names[n] = set
	}
	set[uid] = struct{}{}
	u.names++
	return nil
}

// forgetName uncounts n for every uid (its inode was forgotten).
func (l *limiter) forgetName(n countedNode) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for uid := range l.names[n] {
		if u := l.users[uid]; u != nil && u.names > 0 {
			u.names--
			l.tidy(uid)
		}
	}
	delete(l.names, n)
	l.names = mapshrink.Shrink(l.names, &l.namesPeak)
}

// chargeDir counts one more lock directory for uid (its creator), or
// refuses with EDQUOT; charged is false when nothing was counted (no
// limiter, or an exempt uid). A charge whose mkdir failed is undone with
// unchargeDir.
func (l *limiter) chargeDir(ctx context.Context, uid uint32) (charged bool, err error) {
	if l == nil || l.exempt(uid) {
		return false, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(uid)
	if l.cfg.DirsPerUser > 0 && u.dirs >= l.cfg.DirsPerUser {
		l.tidy(uid)
		return false, l.refuse(uid, kindDirs, l.cfg.DirsPerUser, "lock directories per user")
	}
	u.dirs++
	return true, nil
}

// unchargeDir gives uid one lock directory back (it was removed, or its
// mkdir failed). Nil-safe; a uid with none counted is left alone.
func (l *limiter) unchargeDir(uid uint32) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if u := l.users[uid]; u != nil && u.dirs > 0 {
		u.dirs--
		l.tidy(uid)
	}
}

// moveDir moves one counted lock directory from uid from to uid to (chown
// through this daemon), never refusing. Nil-safe.
func (l *limiter) moveDir(from, to uint32) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.users[from]
	if u == nil || u.dirs == 0 {
		return
	}
	u.dirs--
	l.tidy(from)
	if !l.exempt(to) {
		l.user(to).dirs++
	}
}

// usage returns uid's counts (for tests).
func (l *limiter) usage(uid uint32) userCount {
	l.mu.Lock()
	defer l.mu.Unlock()
	if u := l.users[uid]; u != nil {
		return *u
	}
	return userCount{}
}

// Refusals returns the requests refused by each limit so far, by limit name
// (LimitHeld, LimitWaiting, LimitNames, LimitDirs).
func (s *Server) Refusals() map[string]uint64 {
	out := make(map[string]uint64, numKinds)
	for k := range numKinds {
		var n uint64
		if s.fsys.lim != nil {
			n = s.fsys.lim.refused[k].Load()
		}
		out[limitLabels[k]] = n
	}
	return out
}

// Inodes returns the number of lock-file and lock-directory inodes the
// daemon keeps (looked up and not yet forgotten by the kernel; the root and
// the reserved directories do not count).
func (s *Server) Inodes() int64 { return s.fsys.inodes.Load() }
