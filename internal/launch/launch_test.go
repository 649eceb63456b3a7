package launch

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/internal/syncbuf"
)

// A stand-in daemon: says ready on fd 3 and serves until SIGTERM, which it
// handles with exit 0.
const serveScript = `trap 'echo bye >&2; exit 0' TERM; echo "starting $1" >&2; echo ready >&3; while :; do sleep 0.05; done`

func sh(script string, args ...string) Options {
	return Options{Path: "/bin/sh", Args: append([]string{"-c", script, "sh"}, args...)}
}

func start(t *testing.T, o Options) *Daemon {
	t.Helper()
	d, err := Start(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = d.Kill()
	})
	return d
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestReadyLogAndTerminate(t *testing.T) {
	var tee syncbuf.Buffer
	o := sh(serveScript, "x1")
	o.ReadyFD, o.LogTo = 3, &tee
	d := start(t, o)
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))
	assert.False(t, d.Exited())
	assert.NotEqual(t, "gone", ProcState(d.Pid()))
	require.Eventually(t, func() bool { return strings.Contains(d.Log(), "starting x1") }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, d.Terminate(10*time.Second))
	assert.True(t, d.Exited())
	assert.Equal(t, 0, d.ExitCode())
	assert.Contains(t, d.Log(), "bye", "the log is complete once Done is closed")
	assert.Equal(t, d.Log(), tee.String())
	assert.Equal(t, "gone", ProcState(d.Pid()))
	require.NoError(t, d.Terminate(time.Second), "already exited")
	require.ErrorIs(t, d.WaitReady(context.Background()), ErrNotReady, "read once")
}

func TestReadyOnStdoutAfterExtraFiles(t *testing.T) {
	o := sh(`echo ready`)
	o.ReadyFD = 1
	d := start(t, o)
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	o = sh(`echo extra >&3; echo ready >&4; exec sleep 0`)
	o.ExtraFiles, o.ReadyFD = []*os.File{w}, 4
	d = start(t, o)
	w.Close()
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))
	buf := make([]byte, 6)
	_, err = r.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "extra\n", string(buf))

	o.ReadyFD = 3 // the descriptor of the extra file
	_, err = Start(o)
	require.Error(t, err)
}

func TestNotReady(t *testing.T) {
	o := sh(`echo failing >&2; exit 3`)
	o.ReadyFD = 3
	d := start(t, o)
	err := d.WaitReady(ctxFor(t, 10*time.Second))
	require.ErrorIs(t, err, ErrNotReady)
	code, err := d.Wait(ctxFor(t, 10*time.Second))
	require.NoError(t, err)
	assert.Equal(t, 3, code)
	assert.Contains(t, d.Log(), "failing")

	d = start(t, sh(`exit 0`))
	require.ErrorIs(t, d.WaitReady(context.Background()), ErrNotReady, "no ready descriptor")
}

func TestReadyTimeout(t *testing.T) {
	o := sh(`exec sleep 100`)
	o.ReadyFD = 3
	d := start(t, o)
	require.ErrorIs(t, d.WaitReady(ctxFor(t, 100*time.Millisecond)), context.DeadlineExceeded)
	_, err := d.Wait(ctxFor(t, 50*time.Millisecond))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, d.Kill())
	assert.Equal(t, -1, d.ExitCode())
}

func TestTerminateEscalates(t *testing.T) {
	o := sh(`trap '' TERM; echo ready >&3; while :; do sleep 0.05; done`)
	o.ReadyFD = 3
	d := start(t, o)
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))
	err := d.Terminate(200 * time.Millisecond)
	require.ErrorIs(t, err, ErrKilled)
	assert.False(t, errors.Is(err, ErrNotReaped))
	assert.True(t, d.Exited())
	assert.Equal(t, -1, d.ExitCode())
}

func TestTerminateNonZero(t *testing.T) {
	o := sh(`trap 'exit 4' TERM; echo ready >&3; while :; do sleep 0.05; done`)
	o.ReadyFD = 3
	d := start(t, o)
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))
	err := d.Terminate(10 * time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exit code 4")
	var ee interface{ ExitCode() int }
	require.ErrorAs(t, err, &ee)
}

func TestStopDetachesLeftover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	mnt := t.TempDir()
	// The "daemon" mounts a tmpfs in our namespace and dies by SIGKILL,
	// leaving it behind as a killed FUSE daemon leaves its mount.
	require.NoError(t, unix.Mount("tmpfs", mnt, "tmpfs", 0, ""))
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	o := sh(`trap '' TERM; echo ready >&3; while :; do sleep 0.05; done`)
	o.ReadyFD, o.Mountpoint = 3, mnt
	d := start(t, o)
	require.NoError(t, d.WaitReady(ctxFor(t, 10*time.Second)))
	assert.Equal(t, mnt, d.Mountpoint())
	err := d.Stop(100 * time.Millisecond)
	require.ErrorIs(t, err, ErrKilled)
	ok, err := mountinfo.IsMounted(mnt)
	require.NoError(t, err)
	assert.False(t, ok, "leftover mount detached")
	require.NoError(t, d.UnmountLeftover(), "nothing left to detach")
	require.Error(t, Detach(mnt), "not mounted")
}

func TestSignalGoneProcess(t *testing.T) {
	d := start(t, sh(`exit 0`))
	_, err := d.Wait(ctxFor(t, 10*time.Second))
	require.NoError(t, err)
	require.NoError(t, d.Signal(syscall.SIGTERM), "ESRCH is not an error")
	_, err = Start(Options{Path: "/nonexistent/daemon"})
	require.Error(t, err)
}
