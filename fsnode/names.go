package fsnode

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/lockfs/lockfs/lockengine"
)

// Reserved names in the root of a mount. They are directories, not locks, and
// are never listed by readdir.
const (
	// TryDir: opening TryDir/NAME is a try-lock on NAME (EAGAIN at once
	// when it is not free).
	TryDir = ".try"
	// TimeoutDir: opening TimeoutDir/SECS/NAME waits at most SECS for
	// NAME, then fails with EAGAIN.
	TimeoutDir = ".timeout"
	// SharedDir: opening SharedDir/NAME waits for the shared lock on NAME,
	// whatever the access mode (exec 9<M/.shared/NAME in a shell).
	SharedDir = ".shared"
	// FlockDir: opening FlockDir/NAME never takes a lock; only flock(2)
	// and fcntl(2) calls on the descriptor do (exec 9>M/.flock/NAME;
	// flock -n 9).
	FlockDir = ".flock"
)

// reservedDirs are the reserved names of the root.
var reservedDirs = []string{TryDir, TimeoutDir, SharedDir, FlockDir}

// maxTimeout bounds .timeout/SECS so that the duration cannot overflow.
const maxTimeout = time.Duration(math.MaxInt64)

// errBadTimeout is wrapped by ParseTimeout errors.
var errBadTimeout = errors.New("fsnode: invalid timeout")

// ParseTimeout parses the SECS component of a TimeoutDir path: a
// non-negative decimal number of seconds ("2", "0.5") or a Go duration
// ("500ms", "1m30s"). Errors wrap lockengine.ErrInvalidName, so they map to
// EINVAL.
func ParseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: %w: empty", lockengine.ErrInvalidName, errBadTimeout)
	}
	var d time.Duration
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(secs) || math.IsInf(secs, 0) || secs*float64(time.Second) >= float64(maxTimeout) {
			return 0, fmt.Errorf("%w: %w: %q", lockengine.ErrInvalidName, errBadTimeout, s)
		}
		d = time.Duration(secs * float64(time.Second))
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, fmt.Errorf("%w: %w: %q is neither seconds nor a duration", lockengine.ErrInvalidName, errBadTimeout, s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%w: %w: %q is negative", lockengine.ErrInvalidName, errBadTimeout, s)
	}
	return d, nil
}

// IsReserved reports whether the path component name is a reserved
// directory (TryDir, TimeoutDir, SharedDir, FlockDir): no lock and no lock
// directory, at any depth, can have that name.
func IsReserved(name string) bool { return slices.Contains(reservedDirs, name) }

// validLockName checks one component of a lock name or lock directory, at
// any depth, in the tree or under a view. The reserved names cannot be
// either: in every directory they are its views.
func validLockName(name string) error {
	if err := lockengine.ValidateComponent(name); err != nil {
		return err
	}
	if IsReserved(name) {
		return fmt.Errorf("%w: %q is reserved", lockengine.ErrInvalidName, name)
	}
	return nil
}

// waitKind is how an Open waits for its lock.
type waitKind uint8

const (
	waitBlock   waitKind = iota // M/NAME, M/.shared/NAME: until granted or interrupted
	waitTry                     // M/.try/NAME: not at all
	waitTimeout                 // M/.timeout/SECS/NAME: at most a duration
	waitNone                    // M/.flock/NAME: the open takes nothing
)

// policy is the open policy of one lock file node: whether and how its
// Open takes the lock.
type policy struct {
	kind    waitKind
	timeout time.Duration // for waitTimeout; > 0
	// shared: the open takes the shared lock whatever its access mode
	// (M/.shared/NAME).
	shared bool
}

func (p policy) String() string {
	switch p.kind {
	case waitTry:
		return "try"
	case waitTimeout:
		return "timeout " + p.timeout.String()
	case waitNone:
		return "none"
	}
	if p.shared {
		return "block shared"
	}
	return "block"
}

// timeoutPolicy is the policy of TimeoutDir/SECS: zero is a try-lock.
func timeoutPolicy(d time.Duration) policy {
	if d <= 0 {
		return policy{kind: waitTry}
	}
	return policy{kind: waitTimeout, timeout: d}
}

// openLock says what an open(2) with flags takes under policy p: take is
// false when the open takes nothing (the lock calls on the descriptor
// decide), else the mode and whether to try only.
//
//   - M/.flock/NAME: nothing, ever.
//   - M/NAME: a blocking open for writing takes the exclusive lock; a
//     read-only or O_NONBLOCK open takes nothing, so that flock(1),
//     setlock and chpst, which open and then call flock(2), behave as on
//     a local disk.
//   - M/.shared/NAME: the shared lock, whatever the access mode.
//   - M/.try/NAME, M/.timeout/SECS/NAME: read-only opens the shared lock,
//     others the exclusive one.
//
// O_NONBLOCK makes every form that takes a lock a try.
func (p policy) openLock(flags uint32) (mode lockengine.Mode, try, take bool) {
	nonblock := flags&syscall.O_NONBLOCK != 0
	readOnly := flags&syscall.O_ACCMODE == syscall.O_RDONLY
	switch {
	case p.kind == waitNone:
		return 0, false, false
	case p.shared:
		return lockengine.Shared, nonblock, true
	case p.kind == waitBlock:
		if readOnly || nonblock {
			return 0, false, false
		}
		return lockengine.Exclusive, false, true
	case readOnly:
		return lockengine.Shared, nonblock || p.kind == waitTry, true
	}
	return lockengine.Exclusive, nonblock || p.kind == waitTry, true
}
