package e2e

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// lockfs version and lockfs --help work without a mount.
func TestVersionAndHelp(t *testing.T) {
	e := setup(t)
	v := harness.Start(t, harness.ProcOptions{Path: e.Lockfs, Args: []string{"version"}})
	assert.Equal(t, 0, v.Wait(patience), "lockfs version: %s", v.Stderr())
	assert.NotEmpty(t, v.Stdout()+v.Stderr(), "lockfs version prints nothing")

	h := harness.Start(t, harness.ProcOptions{Path: e.Lockfs, Args: []string{"--help"}})
	assert.Equal(t, 0, h.Wait(patience), "lockfs --help")
	assert.Contains(t, h.Stdout()+h.Stderr(), "mount", "lockfs --help")
}

// A missing or non-directory mountpoint is a clear error (exit 1 or 2,
// naming the path), and nothing is mounted.
func TestBadMountpoint(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	for name, mnt := range map[string]string{"missing": filepath.Join(dir, "missing"), "file": file} {
		d := e.SpawnDaemon(t, harness.DaemonConfig{Mountpoint: mnt})
		code := d.Wait(patience)
		assert.Contains(t, []int{1, 2}, code, "%s mountpoint: exit code", name)
		assert.Contains(t, d.Log(), mnt, "%s mountpoint: the error names the path", name)
		assert.False(t, d.Mounted())
	}
	noArg := harness.Start(t, harness.ProcOptions{Path: e.Lockfs, Args: []string{"mount"}})
	assert.Equal(t, 2, noArg.Wait(patience), "lockfs mount without a mountpoint")
}

// A stale mount left by a killed daemon is cleaned up by the next start.
func TestStaleMountCleanedAtStart(t *testing.T) {
	e := setup(t)
	sd := t.TempDir()
	d1 := e.StartDaemon(t, harness.DaemonConfig{StateDir: sd})
	h := e.Hold(t, d1.Path("x"), "w") // a descriptor keeps the stale mount busy
	d1.Kill()
	require.True(t, d1.Mounted(), "stale mount after SIGKILL")

	d2 := e.StartDaemon(t, harness.DaemonConfig{StateDir: sd, Mountpoint: d1.Mountpoint})
	assert.Equal(t, "granted", probe(t, e, d2.Path("x"), "w"), "the new daemon serves (the killed one's lock is gone)")
	h.CloseStdin()
	h.Wait(patience)
}

// --ready-fd N: "ready\n" is written to fd N, which is then closed, once the
// mount is up; the daemon also logs msg=mounted.
func TestReadyFd(t *testing.T) {
	e := setup(t)
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	d := e.SpawnDaemon(t, harness.DaemonConfig{Args: []string{"--ready-fd", "3"}, ExtraFiles: []*os.File{w}})
	w.Close()
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r) // until the daemon closes fd 3 (or exits)
		got <- string(b)
	}()
	select {
	case s := <-got:
		assert.Equal(t, "ready\n", s)
	case <-time.After(patience):
		t.Fatalf("nothing on --ready-fd within %v; log:\n%s", patience, d.Log())
	}
	assert.True(t, d.Mounted(), "mounted when ready was signalled")
	d.WaitLog(patience, "msg=mounted")
	d.WaitReady(patience)
	assert.Equal(t, "granted", probe(t, e, d.Path("x"), "w"))
}

// A read-only state dir is a clear start-up error (exit 1, naming the
// directory), not a mount that fails later.
func TestReadOnlyStateDirAtStart(t *testing.T) {
	e := setup(t)
	sd := t.TempDir()
	require.NoError(t, unix.Mount(sd, sd, "", unix.MS_BIND, ""))
	t.Cleanup(func() {
		if err := unix.Unmount(sd, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bind %s: %v", sd, err)
		}
	})
	require.NoError(t, unix.Mount("", sd, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""))

	d := e.SpawnDaemon(t, harness.DaemonConfig{StateDir: sd})
	assert.Equal(t, 1, d.Wait(patience), "exit code with a read-only state dir")
	assert.Contains(t, d.Log(), sd, "the error names the state dir")
	assert.False(t, d.Mounted())
}
