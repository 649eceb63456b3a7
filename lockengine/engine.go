// Package lockengine decides who holds which named lock.
//
// An [Engine] grants shared and exclusive locks on names. The one
// implementation, [Queue], keeps a fair FIFO queue per name inside the
// process and asks a [Backend] for the lock across processes: [DirBackend]
// (flock(2) on files in a local directory) or, for many hosts, an etcd
// backend. Callers only ever see [Lease] values.
//
// Every grant carries a fencing token. Every exclusive grant of a name gets a
// token strictly greater than every earlier grant of that name made through
// the same backend; shared grants carry the current generation.
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
	// ErrInvalidName: the name cannot be a file name (empty, ".", "..",
	// contains '/' or NUL).
	ErrInvalidName = errors.New("lockengine: invalid lock name")
	// ErrNameTooLong: the name is longer than MaxNameLen bytes.
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
)

// MaxNameLen is the longest lock name, in bytes (NAME_MAX).
const MaxNameLen = 255

// ValidateName returns nil when name can name a lock, or an error wrapping
// ErrInvalidName or ErrNameTooLong.
func ValidateName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d bytes (max %d)", ErrNameTooLong, len(name), MaxNameLen)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: %q contains '/' or NUL", ErrInvalidName, name)
	}
	return nil
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
	// Snapshot describes every name that is held or waited on, sorted by
	// name. It never blocks on a lock.
	Snapshot() []LockInfo
	// Close releases every lease (their Done channels close with
	// ErrClosed), fails every waiter with ErrClosed and frees resources.
	Close() error
}

// LockInfo describes one name for inspection.
type LockInfo struct {
	Name    string
	Mode    Mode   // mode of the current holders; 0 when none
	Holders int    // leases granted in this engine
	Waiters int    // requests queued in this engine
	Token   uint64 // token of the current grant; 0 when none
	// Since is when the current holders were granted.
	Since time.Time
}

// Backend holds locks across processes (or hosts) on behalf of one Queue.
//
// The Queue guarantees that for any one name there is at most one call in
// progress and at most one Hold outstanding at a time, so a Backend needs no
// per-name queueing of its own: it only excludes other processes.
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
}

// Hold is one process's grant of a name from a Backend.
type Hold interface {
	// Token is the fencing token of this grant.
	Token() uint64
	// Valid reports false once the backend can no longer prove that the
	// grant is held (for example a session lease that may have expired),
	// possibly before the lost callback runs. Callers check it before
	// acting on the lock's protection.
	Valid() bool
	// Unlock gives the name back. It is idempotent.
	Unlock() error
}
