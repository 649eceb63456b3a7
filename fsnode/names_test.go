package fsnode

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
)

func TestParseTimeout(t *testing.T) {
	good := map[string]time.Duration{
		"0":      0,
		"2":      2 * time.Second,
		"0.5":    500 * time.Millisecond,
		"1.25":   1250 * time.Millisecond,
		"500ms":  500 * time.Millisecond,
		"1m30s":  90 * time.Second,
		"0s":     0,
		"100us":  100 * time.Microsecond,
		"3600":   time.Hour,
		"0.0001": 100 * time.Microsecond,
	}
	for in, want := range good {
		got, err := ParseTimeout(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "abc", "-1", "-1s", "NaN", "Inf", "1e300", "5 s", "1x"} {
		_, err := ParseTimeout(in)
		require.Error(t, err, in)
		assert.ErrorIs(t, err, lockengine.ErrInvalidName, in)
		assert.Equal(t, syscall.EINVAL, Errno(err), in)
	}
}

func TestTimeoutPolicy(t *testing.T) {
	assert.Equal(t, waitTry, timeoutPolicy(0).kind, ".timeout/0 is .try")
	p := timeoutPolicy(time.Second)
	assert.Equal(t, waitTimeout, p.kind)
	assert.Equal(t, time.Second, p.timeout)
}

func TestValidLockName(t *testing.T) {
	require.NoError(t, validLockName("x"))
	require.NoError(t, validLockName(".hidden"))
	require.NoError(t, validLockName(strings.Repeat("a", 255)))
	assert.ErrorIs(t, validLockName(strings.Repeat("a", 256)), lockengine.ErrNameTooLong)
	for _, n := range []string{"", ".", "..", TryDir, TimeoutDir, SharedDir, FlockDir, "a/b", "a\x00b"} {
		assert.ErrorIs(t, validLockName(n), lockengine.ErrInvalidName, "%q", n)
	}
}

// TestOpenLock pins what each open form takes (the semantics table of the
// README): blocking write opens of M/NAME lock exclusively, read-only and
// O_NONBLOCK opens of M/NAME and every open of M/.flock/NAME take nothing.
func TestOpenLock(t *testing.T) {
	const (
		ro = syscall.O_RDONLY
		wo = syscall.O_WRONLY
		rw = syscall.O_RDWR
		nb = syscall.O_NONBLOCK
		sh = lockengine.Shared
		ex = lockengine.Exclusive
	)
	root := policy{}
	try := policy{kind: waitTry}
	tmo := policy{kind: waitTimeout, timeout: time.Second}
	shared := policy{kind: waitBlock, shared: true}
	flk := policy{kind: waitNone}
	cases := []struct {
		p     policy
		flags uint32
		mode  lockengine.Mode
		try   bool
		take  bool
	}{
		{root, wo | syscall.O_CREAT | syscall.O_TRUNC, ex, false, true},
		{root, rw, ex, false, true},
		{root, wo | syscall.O_APPEND, ex, false, true},
		{root, ro, 0, false, false},
		{root, wo | syscall.O_APPEND | nb, 0, false, false}, // setlock, chpst -l
		{root, ro | nb, 0, false, false},
		{try, ro, sh, true, true},
		{try, wo, ex, true, true},
		{tmo, ro, sh, false, true},
		{tmo, wo | nb, ex, true, true},
		{shared, ro, sh, false, true},
		{shared, wo, sh, false, true},
		{shared, ro | nb, sh, true, true},
		{flk, wo | syscall.O_TRUNC, 0, false, false},
		{flk, ro, 0, false, false},
	}
	for _, c := range cases {
		mode, try, take := c.p.openLock(c.flags)
		assert.Equal(t, []any{c.mode, c.try, c.take}, []any{mode, try, take}, "policy %v flags %#o", c.p, c.flags)
	}
}

func TestErrno(t *testing.T) {
	cases := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("lock %q: %w", "x", context.Canceled), syscall.EINTR},
		{fmt.Errorf("lock %q: %w", "x", lockengine.ErrWouldBlock), syscall.EAGAIN},
		{fmt.Errorf("wait: %w", errTimedOut), syscall.EAGAIN},
		{fmt.Errorf("%w: 300 bytes", lockengine.ErrNameTooLong), syscall.ENAMETOOLONG},
		{fmt.Errorf("%w: %q", lockengine.ErrInvalidName, ""), syscall.EINVAL},
		{lockengine.ErrInvalidMode, syscall.EINVAL},
		{fmt.Errorf("%w: heartbeat failed", lockengine.ErrLost), syscall.EIO},
		{lockengine.ErrClosed, syscall.EIO},
		{fmt.Errorf("open lock file: %w", syscall.EROFS), syscall.EROFS},
		{fmt.Errorf("open lock file: %w", syscall.EACCES), syscall.EACCES},
		{fmt.Errorf("write: %w", syscall.ENOSPC), syscall.ENOSPC},
		{fmt.Errorf("stat: %w", syscall.ENOENT), syscall.EIO},
		{fmt.Errorf("%w: symlink at path", lockengine.ErrNotRegular), syscall.EIO},
		{errors.New("something odd"), syscall.EIO},
		{errNotPermitted, syscall.EPERM},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Errno(c.err), "%v", c.err)
	}
}
