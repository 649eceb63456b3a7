package e2e

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// ls lists the names held or waited on, and nothing else; released names
// disappear.
func TestListHeldAndWaited(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	names, _ := listNames(t, d.Mountpoint)
	require.Empty(t, names, "ls of a fresh mount")
	_, err := os.Stat(d.Path("looked-up-only")) // a lookup alone is not a lock
	require.NoError(t, err)

	a := e.Hold(t, d.Path("alpha"), "w")
	b := e.Hold(t, sharedPath(d.Path("beta")), "r")
	bw := e.Waiter(t, d.Path("beta"), "w")
	g := shellHold(t, e, d.Mountpoint+"/.try/gamma", ">")
	dl := shellHold(t, e, d.Mountpoint+"/.timeout/5/delta", "<")

	names, dots := listNames(t, d.Mountpoint)
	assert.Equal(t, []string{"alpha", "beta", "delta", "gamma"}, names, "ls while held")
	t.Logf("dot entries listed: %q", dots)
	for _, dot := range dots {
		assert.NotContains(t, []string{".try", ".timeout", ".shared", ".flock"}, dot, "ls lists %s", dot)
	}

	harness.Release(t, a)
	shellRelease(t, g)
	shellRelease(t, dl)
	harness.Release(t, b)
	harness.Granted(t, bw, patience)
	harness.Eventually(t, patience, func() (bool, string) {
		names, _ := listNames(t, d.Mountpoint)
		return len(names) == 1 && names[0] == "beta", "ls after releases: " + strings.Join(names, " ")
	})
	harness.Release(t, bw)
	harness.Eventually(t, patience, func() (bool, string) {
		names, _ := listNames(t, d.Mountpoint)
		return len(names) == 0, "ls after all releases: " + strings.Join(names, " ")
	})
}

// O_TRUNC works (shell >), and writes to a lock descriptor are accepted.
func TestTruncAndWrites(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	p := e.Bash(t, `exec 9>"$M/w" && echo hello >&9 && printf 'more' >&9 && echo hi >"$M/w2" && echo hi >>"$M/w2" &&
exec 9>&- && echo ok`, "M="+d.Mountpoint)
	p.WaitLine("ok", patience)
	require.Equal(t, 0, p.Wait(patience), "bash: %s", p.Stderr())

	s := e.Sh(t, `exec 9>"$M/w" && echo hello >&9 && echo ok`, "M="+d.Mountpoint)
	s.WaitLine("ok", patience)
	require.Equal(t, 0, s.Wait(patience), "busybox: %s", s.Stderr())

	for _, mode := range []string{"w", "a", "rw"} {
		c := e.PyClient(t, "--mode", mode, d.Path("py-"+mode)) // w is O_WRONLY|O_CREAT|O_TRUNC
		harness.Granted(t, c, patience)
		assert.Equal(t, "ok", harness.Command(t, c, "write"), "python write, mode %s", mode)
		assert.Equal(t, "ok", harness.Command(t, c, "fsync"), "python fsync, mode %s", mode)
		harness.Release(t, c)

		g := e.GoClient(t, "-mode", mode, d.Path("go-"+mode))
		harness.Granted(t, g, patience)
		assert.Equal(t, "ok", harness.Command(t, g, "write"), "go write, mode %s", mode)
		assert.Equal(t, "ok", harness.Command(t, g, "fstat"), "go fstat, mode %s", mode)
		harness.Release(t, g)
	}
	// truncate(2) by path, as `: > file` tools do without opening.
	assert.NoError(t, os.Truncate(d.Path("w"), 0))
}

// A name over 255 bytes gets ENAMETOOLONG; 255 bytes is fine; the daemon
// keeps serving.
func TestNameTooLong(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	long := strings.Repeat("a", 256)

	for _, path := range []string{d.Path(long), d.Mountpoint + "/.try/" + long, d.Mountpoint + "/.timeout/1/" + long} {
		_, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		assert.ErrorIs(t, err, unix.ENAMETOOLONG, "open %s...", path[:len(path)-250])
	}
	var st unix.Stat_t
	assert.ErrorIs(t, unix.Stat(d.Path(long), &st), unix.ENAMETOOLONG, "stat")
	p := e.Bash(t, `exec 9>"$P"`, "P="+d.Path(long))
	assert.NotEqual(t, 0, p.Wait(patience))
	assert.Contains(t, p.Stderr(), "File name too long")

	assert.Equal(t, "granted", probe(t, e, d.Path(strings.Repeat("b", 255)), "w"), "a 255-byte name")
}

// rmdir of a name or a reserved directory, mkdir under a view, rename,
// link, symlink and mknod are refused, and the daemon keeps serving.
// (mkdir of a free name makes a lock directory: see tree_test.go.)
func TestNamespaceChangesRefused(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	m := d.Mountpoint

	// The README's Semantics table promises EPERM. For operations that
	// create a name, the kernel answers EEXIST itself when lookup says the
	// name exists (every name does), before the filesystem is asked; rmdir
	// of a regular file gets ENOTDIR the same way. Those are accepted too,
	// and logged.
	ops := []struct {
		name    string
		do      func() error
		allowed []error
	}{
		{"mkdir .try/x", func() error { return unix.Mkdir(m+"/.try/newdir", 0o755) }, []error{unix.EEXIST}},
		{"rmdir name", func() error { return unix.Rmdir(m + "/x") }, []error{unix.ENOTDIR}},
		{"rmdir .try", func() error { return unix.Rmdir(m + "/.try") }, []error{unix.ENOTEMPTY, unix.EBUSY}},
		{"rename", func() error { return unix.Rename(m+"/x", m+"/y") }, nil},
		{"link", func() error { return unix.Link(m+"/x", m+"/x2") }, []error{unix.EEXIST}},
		{"symlink", func() error { return unix.Symlink("/etc/passwd", m+"/sym") }, []error{unix.EEXIST}},
		{"mknod fifo", func() error { return unix.Mknod(m+"/fifo", unix.S_IFIFO|0o644, 0) }, []error{unix.EEXIST}},
		{"mknod reg", func() error { return unix.Mknod(m+"/reg", unix.S_IFREG|0o644, 0) }, []error{unix.EEXIST}},
	}
	for _, op := range ops {
		err := op.do()
		var errno unix.Errno
		if !assert.True(t, errors.As(err, &errno), "%s: got %v, want EPERM", op.name, err) {
			continue
		}
		if errno == unix.EPERM {
			continue
		}
		accepted := false
		for _, a := range op.allowed {
			accepted = accepted || errors.Is(errno, a)
		}
		assert.True(t, accepted, "%s: got %v (%s), want EPERM", op.name, err, unix.ErrnoName(errno))
		t.Logf("%s: %s (kernel-level answer, not EPERM)", op.name, unix.ErrnoName(errno))
	}
	// Nothing was created: the mount lists no names, the daemon serves.
	names, _ := listNames(t, m)
	assert.Empty(t, names)
	assert.Equal(t, "granted", probe(t, e, d.Path("x"), "w"))
	require.False(t, d.Exited())
}
