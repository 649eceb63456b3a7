package fsnode

import (
	"errors"
	"fmt"
	"math"
	"strconv"
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
)

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

// validLockName checks a name that is to become a lock (a file under the
// root, TryDir or a TimeoutDir/SECS directory). The reserved names cannot be
// locks: they would be unreachable through the root.
func validLockName(name string) error {
	if err := lockengine.ValidateName(name); err != nil {
		return err
	}
	if name == TryDir || name == TimeoutDir {
		return fmt.Errorf("%w: %q is reserved", lockengine.ErrInvalidName, name)
	}
	return nil
}

// waitKind is how an Open waits for its lock.
type waitKind uint8

const (
	waitBlock   waitKind = iota // M/NAME: until granted or interrupted
	waitTry                     // M/.try/NAME: not at all
	waitTimeout                 // M/.timeout/SECS/NAME: at most a duration
)

// policy is the wait policy of one lock file node.
type policy struct {
	kind    waitKind
	timeout time.Duration // for waitTimeout; > 0
}

func (p policy) String() string {
	switch p.kind {
	case waitTry:
		return "try"
	case waitTimeout:
		return "timeout " + p.timeout.String()
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
