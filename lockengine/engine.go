// Package lockengine decides who holds which named lock.
//
// An [Engine] grants shared and exclusive locks on names. The one
// implementation, [Queue], keeps a fair FIFO queue per name inside the
// process and asks a [Backend] for the lock across processes: the dir
// backend (package lockengine/dirlock: flock(2) on files in a local
// directory) or, for many hosts, the etcd backend (package
// lockengine/etcdlock). Callers only ever see [Lease] values.
//
// Every grant carries a fencing token. Every exclusive grant of a name gets a
// token strictly greater than every earlier grant of that name made through
// the same backend; shared grants carry the current generation.
//
// # Glossary
//
//   - name: what a lock is called; a path of valid file names (see
//     [ValidateName] and [Tree]), the same in every process that shares the
//     backend.
//   - directory: a lock directory, the parent of names (see [Tree]).
//   - mode: [Shared] (any number of holders) or [Exclusive] (one holder, or
//     up to the name's limit set with SetLimit).
//   - request: one Acquire or TryAcquire call for a name in a mode; it
//     waits in the name's FIFO queue until granted, failed or cancelled.
//   - lease: one granted request, a [Lease]; it ends when released, lost or
//     the engine closes.
//   - group: the leases of a name granted under one hold: one exclusive
//     lease (or up to the limit), or any number of shared ones.
//   - hold: one process's grant of a name from the backend, a [Hold]; the
//     Queue keeps at most one per name.
//   - backend: what excludes processes (or hosts) from each other, a
//     [Backend]; the mount flag --engine picks it.
//   - token: the fencing token of a grant (see above); a holder passes it
//     to the resources it protects so they can refuse stale holders.
//   - lost: a lease ended because the backend could no longer prove the
//     hold (file removed or replaced, refresh failing, taken over, session
//     expired) or because it was broken; its error wraps [ErrLost].
//   - broken: lost by [Engine.Break] on an administrator's or holder's
//     behalf; the error wraps [ErrBroken] too, and the name stays
//     unavailable for the lock-delay.
//   - released: ended by its holder with [Lease.Release]; the error wraps
//     [ErrReleased].
package lockengine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Mode is the kind of lock requested: Shared or Exclusive.
type Mode uint8

const (
	// Shared locks may be held by any number of holders at once, but never
	// together with an exclusive holder.
	Shared Mode = iota + 1
	// Exclusive locks have exactly one holder.
	Exclusive
)

// String returns "shared", "exclusive" or "mode(N)" for invalid modes.
func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Valid reports whether m is Shared or Exclusive.
func (m Mode) Valid() bool { return m == Shared || m == Exclusive }

// Sentinel errors. Callers tell cases apart with errors.Is; the returned
// errors wrap these with the lock name and the underlying cause.
var (
	// ErrWouldBlock: TryAcquire could not grant at once (held in a
	// conflicting mode, or earlier waiters are queued).
	ErrWouldBlock = errors.New("lockengine: lock would block")
	// ErrInvalidName: the name is not a path of valid file names (an
	// empty component, ".", "..", a NUL byte, a leading or trailing '/').
	ErrInvalidName = errors.New("lockengine: invalid lock name")
	// ErrNameTooLong: a component is longer than MaxNameLen bytes, the
	// name longer than MaxPathLen or deeper than MaxDepth.
	ErrNameTooLong = errors.New("lockengine: lock name too long")
	// ErrInvalidMode: the mode is neither Shared nor Exclusive.
	ErrInvalidMode = errors.New("lockengine: invalid lock mode")
	// ErrLost: the lock was lost while held (backing file removed or
	// replaced, refresh failing, taken over, broken, session expired).
	ErrLost = errors.New("lockengine: lock lost")
	// ErrReleased: the lease was released by its holder.
	ErrReleased = errors.New("lockengine: lease released")
	// ErrClosed: the engine was closed.
	ErrClosed = errors.New("lockengine: engine closed")
	// ErrNotRegular: something other than a regular file with one link
	// (a symlink, directory, device, FIFO, hard-linked file) is at the
	// backing path. It is never truncated or deleted.
	ErrNotRegular = errors.New("lockengine: backing path is not a regular lock file")
	// ErrRemoteFS: the backing directory is on a network filesystem where
	// flock(2) and inode checks cannot be trusted.
	ErrRemoteFS = errors.New("lockengine: backing directory is on a network filesystem")
	// ErrNotHeld: Break found no holder of the name in this engine.
	ErrNotHeld = errors.New("lockengine: lock not held here")
	// ErrPermission: Break by someone who is neither root nor the owner
	// (UID) of every current lease of the name.
	ErrPermission = errors.New("lockengine: permission denied")
	// ErrLockDelay: Break of a name that only the engine's own lease
	// holds, during the lock-delay after an earlier break. Refused, so
	// that a second break cannot extend the delay; it does not wrap
	// ErrNotHeld.
	ErrLockDelay = errors.New("lockengine: lock is in its lock-delay after a break")
	// ErrInvalidLimit: SetLimit with a limit below 1.
	ErrInvalidLimit = errors.New("lockengine: invalid lock limit")
	// ErrBroken is wrapped (with ErrLost) by the error of leases ended by
	// Break.
	ErrBroken = errors.New("lockengine: lock broken by an administrator")
)

// MaxNameLen is the longest component of a lock name, in bytes (NAME_MAX).
const MaxNameLen = 255

// ValidateName returns nil when name can name a lock or a lock directory
// (a path, see Tree), or an error wrapping ErrInvalidName or
// ErrNameTooLong.
func ValidateName(name string) error {
	if len(name) > MaxPathLen {
		return fmt.Errorf("%w: %d bytes (max %d)", ErrNameTooLong, len(name), MaxPathLen)
	}
	depth := 0
	for comp := range strings.SplitSeq(name, "/") {
		if err := ValidateComponent(comp); err != nil {
			if errors.Is(err, ErrNameTooLong) {
				return fmt.Errorf("%w: component of %d bytes in %q (max %d)", ErrNameTooLong, len(comp), name, MaxNameLen)
			}
			return fmt.Errorf("%w: %q", ErrInvalidName, name)
		}
		if depth++; depth > MaxDepth {
			return fmt.Errorf("%w: %q is deeper than %d components", ErrNameTooLong, name, MaxDepth)
		}
	}
	return nil
}

// ValidateComponent returns nil when c can be one component of a name: a
// file name that is not empty, "." or "..", at most MaxNameLen bytes, with
// no '/' or NUL. Errors wrap ErrInvalidName or ErrNameTooLong.
func ValidateComponent(c string) error {
	switch {
	case c == "" || c == "." || c == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, c)
	case len(c) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes (max %d)", ErrNameTooLong, len(c), MaxNameLen)
	case strings.ContainsAny(c, "/\x00"):
		return fmt.Errorf("%w: %q contains '/' or NUL", ErrInvalidName, c)
	}
	return nil
}

// SplitName splits a valid name into its parent directory's path ("" for
// a top-level name) and its last component.
func SplitName(name string) (dir, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// JoinName returns the name of base in directory dir ("" is the root).
func JoinName(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// Engine grants named locks. All methods are safe for concurrent use.
type Engine interface {
	// Acquire blocks until the lock is granted or ctx ends. Waiters of one
	// name are granted in arrival order; consecutive shared requests at the
	// head of the queue are granted together. When ctx ends first, Acquire
	// returns ctx.Err() (wrapped) and leaves nothing behind: a grant that
	// raced with the cancellation is undone.
	Acquire(ctx context.Context, name string, mode Mode) (*Lease, error)
	// TryAcquire grants the lock only if that is possible without waiting
	// for any other holder or earlier waiter; otherwise it returns an error
	// wrapping ErrWouldBlock. It may still do bounded I/O.
	TryAcquire(ctx context.Context, name string, mode Mode) (*Lease, error)
	// Snapshot describes every name that is held, lost but not yet
	// released, or waited on, sorted by name. It never blocks on a lock.
	Snapshot() []LockInfo
	// Inspect describes one name like Snapshot; ok is false when nothing
	// holds or waits for it in this engine.
	Inspect(name string) (info LockInfo, ok bool)
	// Break ends every current lease of name in this engine with an
	// error wrapping ErrLost and ErrBroken, on behalf of by, who must be
	// root (UID 0) or own (by UID) every lease currently granted on the
	// name: a lone holder may break its own lock, but a co-holder of a
	// shared lock or of a semaphore's slots may not end the others'
	// leases (ErrPermission, logged with the name, the UID and the
	// reason; it releases its own lease instead). The name is then held
	// exclusively by the engine itself for the lock-delay, which bumps
	// the fencing token and keeps every waiter out until the delay has
	// passed, semaphore waiters included. During the delay, when only the
	// engine's own lease holds the name, Break returns ErrLockDelay: a
	// second break cannot extend it. ErrNotHeld when no lease of name is
	// held in this engine.
	Break(ctx context.Context, name string, by Owner) error
	// SetLimit makes name a counting semaphore: up to n exclusive holders
	// at once, each with a token of its own, FIFO beyond them (shared
	// requests are unaffected and still exclude exclusive ones). n == 1
	// restores a plain lock. Lowering the limit takes nothing away from
	// current holders; new grants wait until fewer than n hold it;
	// raising it admits waiters at once. The limit is kept in this
	// engine's memory only: every daemon that shares the name must set
	// it, and it is gone after a restart. Across engines the name is held
	// by one engine at a time, however many holders that engine admits.
	SetLimit(name string, n int) error
	// Limit returns name's limit (1 unless SetLimit raised it).
	Limit(name string) int
	// Close releases every lease (their Done channels close with
	// ErrClosed), fails every waiter with ErrClosed and frees resources.
	Close() error
	// Tree manages the lock directories: names are paths in it.
	Tree
}

// State is the state of a name in one engine.
type State uint8

const (
	// StateNone: nothing holds or waits for the name here.
	StateNone State = iota
	// StateHeld: leases are held.
	StateHeld
	// StateLost: the lock was lost; some leases are not released yet.
	StateLost
	// StateWaiting: nothing holds it here, requests wait.
	StateWaiting
)

// String returns "held", "lost", "waiting" or "none".
func (s State) String() string {
	switch s {
	case StateHeld:
		return "held"
	case StateLost:
		return "lost"
	case StateWaiting:
		return "waiting"
	}
	return "none"
}

// LockInfo describes one name for inspection. It is a copy: by the time
// the caller looks at it, the state may have changed.
type LockInfo struct {
	Name    string
	State   State
	Mode    Mode   // mode of the current (or lost) holders; 0 when none
	Holders int    // current leases in this engine (lost ones excluded)
	Waiters int    // requests queued in this engine
	Token   uint64 // token of the current grant; 0 when none
	// Since is when the current holders were granted.
	Since time.Time
	// Heartbeat is when the backend last refreshed the grant; zero when
	// the backend does not report it.
	Heartbeat time.Time
	// LostCause says why the lock was lost (StateLost).
	LostCause string
	// Leases lists the current leases, then the lost ones not yet released.
	Leases []LeaseInfo
	// Waiting lists the owners of queued requests, in queue order.
	Waiting []Owner
}

// LeaseInfo describes one lease.
type LeaseInfo struct {
	Owner   Owner
	Mode    Mode
	Token   uint64
	Granted time.Time
	Lost    bool
}

// Owner identifies who requested a lock, as the kernel reported the caller,
// and through which interface. PID is 0 for callers in another PID
// namespace.
type Owner struct {
	UID, GID, PID uint32
	Via           Via
}

// Via is the interface through which a lock was requested. It is recorded
// for inspection only; every interface takes the same lock.
type Via uint8

const (
	// ViaUnknown: not recorded (a caller of the Go API).
	ViaUnknown Via = iota
	// ViaOpen: the open(2) of a lock file took the lock.
	ViaOpen
	// ViaFlock: flock(2) on a descriptor.
	ViaFlock
	// ViaPOSIX: an fcntl(2) record lock (F_SETLK, F_SETLKW, F_OFD_*) or
	// lockf(3).
	ViaPOSIX
)

// String returns "open", "flock", "posix" or "-" for ViaUnknown.
func (v Via) String() string {
	switch v {
	case ViaOpen:
		return "open"
	case ViaFlock:
		return "flock"
	case ViaPOSIX:
		return "posix"
	}
	return "-"
}

type ownerKey struct{}

// WithOwner returns a context that makes Acquire and TryAcquire record o
// as the owner of the request and of the lease it yields.
func WithOwner(ctx context.Context, o Owner) context.Context {
	return context.WithValue(ctx, ownerKey{}, o)
}

// OwnerFrom returns the owner recorded by WithOwner.
func OwnerFrom(ctx context.Context) (Owner, bool) {
	o, ok := ctx.Value(ownerKey{}).(Owner)
	return o, ok
}

// HeartbeatReporter is implemented by Holds that know when they last
// refreshed their grant. The Queue calls LastHeartbeat with the per-name
// lock held (see Hold), for Snapshot and Inspect.
type HeartbeatReporter interface {
	LastHeartbeat() time.Time
}

// Observer receives events for metrics. Methods are called with internal
// locks held and must be fast and must not call back into the engine.
type Observer interface {
	// Granted: a lease was granted after waiting for waited.
	Granted(name string, mode Mode, waited time.Duration)
	// Released: a lease was released by its holder after held.
	Released(name string, mode Mode, held time.Duration)
	// Lost: a lease was lost (cause wraps ErrLost).
	Lost(name string, mode Mode, cause error)
}

type nopObserver struct{}

func (nopObserver) Granted(string, Mode, time.Duration)  {}
func (nopObserver) Released(string, Mode, time.Duration) {}
func (nopObserver) Lost(string, Mode, error)             {}

// Backend holds locks across processes (or hosts) on behalf of one Queue.
//
// The Queue guarantees that for any one name there is at most one call in
// progress and at most one Hold outstanding at a time, so a Backend needs no
// per-name queueing of its own: it only excludes other processes.
//
// The Queue calls TryLock, Lock and Close without holding any lock of its
// own: they may block on I/O (network round trips, waiting for another
// holder). The lost callback they are given takes the per-name lock, so a
// backend must never call it while holding a lock that it also takes in a
// method the Queue calls with the per-name lock held (see Hold).
type Backend interface {
	// TryLock makes one attempt and returns an error wrapping ErrWouldBlock
	// when another process holds name in a conflicting mode. It never waits
	// for another holder.
	TryLock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error)
	// Lock waits until name is held in mode or ctx ends. Transient
	// conditions (held elsewhere, file replaced or vanished) are retried;
	// other failures return promptly with the name and the cause.
	//
	// For both methods, lost is called at most once, from another
	// goroutine, when the backend learns that a granted Hold is no longer
	// valid; its argument wraps ErrLost. It may be called concurrently
	// with or shortly after Unlock, and must tolerate that.
	Lock(ctx context.Context, name string, mode Mode, lost func(error)) (Hold, error)
	// Close stops background work. Holds still outstanding are released.
	Close() error
	// Tree keeps the lock directories in the shared store, so that every
	// process sharing it sees the same tree. The Queue calls its methods
	// without any lock of its own, after checking the names it holds or
	// queues itself; the backend checks the rest, atomically with respect
	// to TryLock and Lock of every process sharing the store, as far as
	// it can see them (see each backend's documentation): Mkdir fails
	// with ErrExist while another process holds the path, Rmdir with
	// ErrNotEmpty while another process holds a name below it. TryLock
	// and Lock of a name whose parent directory does not exist fail at
	// once with an error wrapping ErrNoDir, and of a name that is a
	// directory with ErrIsDir; a Lock that waits when the directory is
	// removed (possible only where the backend cannot see waiters of
	// other processes) fails with ErrNoDir instead of waiting on.
	Tree
}

// Hold is one process's grant of a name from a Backend.
//
// The Queue calls Token (and LastHeartbeat, when the Hold is a
// HeartbeatReporter) with the per-name lock held: the lock (entry.mu) that
// every Acquire, Release, Break, loss and inspection (Inspect, Snapshot)
// of the name takes. They must return promptly and without I/O, and must
// not call back into the Queue nor call the lost callback themselves.
// Valid is called without the per-name lock, by Lease.Err on every check
// of a lease, from any goroutine: it must be cheap and must not block on
// I/O. Bump and Unlock are called without the per-name lock and may block
// on I/O (Bump after at most one bounded request: a write to the lock
// file, one etcd transaction bounded by the operation timeout); the Queue
// marks the name busy meanwhile, so no other backend call for the name
// overlaps them, and a Release, loss or Break of the name waits for a Bump
// to end. Bump must not call the lost callback itself, and a backend must
// not call the lost callback while holding a lock that Bump takes.
type Hold interface {
	// Token is the fencing token of this grant.
	Token() uint64
	// Valid reports false once the backend can no longer prove that the
	// grant is held (for example a session lease that may have expired),
	// possibly before the lost callback runs. Callers check it before
	// acting on the lock's protection.
	Valid() bool
	// Bump raises the fencing token of an exclusive grant while it is
	// held and returns the new token, strictly greater than every earlier
	// token of the name. The Queue bumps when Break keeps the hold for the
	// lock-delay and when a second or later exclusive holder joins a
	// semaphore's group. A shared grant, or one no longer held, returns an
	// error wrapping ErrNotHeld.
	Bump() (uint64, error)
	// Unlock gives the name back. It is idempotent.
	Unlock() error
}
