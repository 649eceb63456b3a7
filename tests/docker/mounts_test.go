package docker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
)

// hostMounts returns the mounts of the test process's mount namespace (the
// host's: dockerd shares it on these machines).
func hostMounts(t testing.TB) []mountinfo.Mount {
	t.Helper()
	ms, err := mountinfo.Read()
	require.NoError(t, err)
	return ms
}

// lockfsMountsAt returns the fuse.lockfs mounts at point.
func lockfsMountsAt(mounts []mountinfo.Mount, point string) []mountinfo.Mount {
	return mountinfo.Lockfs(mountinfo.At(mounts, point))
}

// unmountBelow lazily unmounts every mount at or below dir, topmost first,
// and returns an error if some remain.
func unmountBelow(dir string) error {
	dir = filepath.Clean(dir)
	for round := 0; round < 50; round++ {
		ms, err := mountinfo.Read()
		if err != nil {
			return err
		}
		below := mountinfo.Under(ms, dir)
		if len(below) == 0 {
			return nil
		}
		// Deepest path first; among equal paths the newest (stacked on top).
		sort.Slice(below, func(i, j int) bool {
			di, dj := strings.Count(below[i].Point, "/"), strings.Count(below[j].Point, "/")
			if di != dj {
				return di > dj
			}
			return below[i].ID > below[j].ID
		})
		var errs []error
		for _, m := range below {
			if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("umount -l %s (%s): %w", m.Point, m.FSType, err))
			}
		}
		if len(errs) > 0 && round > 3 {
			return errors.Join(errs...)
		}
	}
	return fmt.Errorf("mounts remain below %s", dir)
}

// testDir returns a fresh host directory for t below the run directory,
// removed (after unmounting anything below it) when t ends. Register it before
// the containers that use it, so that they are removed first.
func testDir(t *testing.T, name string) string {
	t.Helper()
	base := filepath.Join(runDir, sanitize(t.Name()))
	require.NoError(t, os.MkdirAll(base, 0o755))
	dir, err := os.MkdirTemp(base, name+"-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o777))
	t.Cleanup(func() {
		if err := unmountBelow(dir); err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// sharedDir returns a host directory made a shared mount (bind-mounted onto
// itself, then made shared), with an empty subdirectory "locks" for the daemon
// to mount on. Docker accepts rshared/rslave bind propagation only for a
// source that is shared in dockerd's mount namespace.
func sharedDir(t *testing.T, name string) string {
	t.Helper()
	dir := testDir(t, name)
	require.NoError(t, unix.Mount(dir, dir, "", unix.MS_BIND, ""), "bind %s", dir)
	require.NoError(t, unix.Mount("", dir, "", unix.MS_SHARED, ""), "make-shared %s", dir)
	require.NoError(t, os.Mkdir(filepath.Join(dir, "locks"), 0o755))
	return dir
}
