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
)

// mountEntry is one line of /proc/PID/mountinfo.
type mountEntry struct {
	id     int
	point  string // mount point, unescaped
	fstype string
	prop   string // optional fields, e.g. "shared:4 master:2"
}

// parseMountinfo parses the text of a mountinfo file.
func parseMountinfo(text string) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, s := range f {
			if s == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		var id int
		fmt.Sscan(f[0], &id)
		out = append(out, mountEntry{
			id:     id,
			point:  unescapeOctal(f[4]),
			fstype: f[sep+1],
			prop:   strings.Join(f[6:sep], " "),
		})
	}
	return out
}

// unescapeOctal undoes the \NNN escapes of mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// hostMounts returns the mounts of the test process's mount namespace (the
// host's: dockerd shares it on these machines).
func hostMounts(t testing.TB) []mountEntry {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	return parseMountinfo(string(b))
}

// lockfsMountsAt returns the fuse.lockfs mounts at point.
func lockfsMountsAt(mounts []mountEntry, point string) []mountEntry {
	var out []mountEntry
	for _, m := range mounts {
		if m.point == point && m.fstype == "fuse.lockfs" {
			out = append(out, m)
		}
	}
	return out
}

// unmountBelow lazily unmounts every mount at or below dir, topmost first,
// and returns an error if some remain.
func unmountBelow(dir string) error {
	dir = filepath.Clean(dir)
	for round := 0; round < 50; round++ {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return fmt.Errorf("read mountinfo: %w", err)
		}
		var below []mountEntry
		for _, m := range parseMountinfo(string(b)) {
			if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
				below = append(below, m)
			}
		}
		if len(below) == 0 {
			return nil
		}
		// Deepest path first; among equal paths the newest (stacked on top).
		sort.Slice(below, func(i, j int) bool {
			di, dj := strings.Count(below[i].point, "/"), strings.Count(below[j].point, "/")
			if di != dj {
				return di > dj
			}
			return below[i].id > below[j].id
		})
		var errs []error
		for _, m := range below {
			if err := unix.Unmount(m.point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("umount -l %s (%s): %w", m.point, m.fstype, err))
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
