package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// What these tests (and tree_users_test.go, tree_etcd_test.go and
// tests/docker/subtree_test.go) assume of the filesystem side:
//   - the mount uses default_permissions; a lock file reports its
//     directory's uid/gid and mode dirmode&0666 (not its holder);
//   - lookups of unheld names in a directory let mkdir reach the daemon;
//   - lock calls (flock, fcntl, lockf) are checked against the calling
//     process's credentials at the time of the call (a descriptor root
//     opened and passed to another user does not let that user lock);
//   - changes through another daemon show within --attr-timeout (the
//     tests poll up to 15 s); names in a directory removed through the
//     other daemon give ENOENT;
//   - lockfs status M/sub is recursive and prints full paths;
//   - --root-owner takes numbers or names; --max-dirs-per-user refuses
//     mkdir with EDQUOT, exempts root, and rmdir gives the allowance back;
//   - a setgid parent passes its group and the setgid bit on.
//
// Lock directories (issue 14): names are paths below the mount; M/team is
// a lock directory made with mkdir, M/team/deploy a lock in it, and the
// reserved views take paths (M/.try/team/deploy). The helpers below take
// a mountpoint and a name relative to it ("team/deploy"), because the
// helpers of the flat namespace (probe, tryPath, waitFree) put the view
// next to the name (M/team/.try/deploy), which is not where it is.

// inView returns the path of name under the reserved view of mount m:
// view "" is M/NAME itself, ".try" is M/.try/NAME, ".timeout/5" is
// M/.timeout/5/NAME, and so on.
func inView(m, view, name string) string {
	if view == "" {
		return filepath.Join(m, name)
	}
	return filepath.Join(m, view, name)
}

// openOnce opens path with the Go client in mode (w, a, rw, r), with
// O_NONBLOCK when nonblock is set, closes it at once if the open
// succeeded, and returns "granted" or the errno name of the failed open.
func openOnce(t *testing.T, e *harness.Env, path, mode string, nonblock bool) string {
	t.Helper()
	args := []string{"-mode", mode, path}
	if nonblock {
		args = append([]string{"-nonblock"}, args...)
	}
	p := e.GoClient(t, args...)
	p.CloseStdin()
	return openOutcome(t, p)
}

// openOutcome reads a client's outcome line after "start" and waits for
// it to exit: "granted" or the errno name.
func openOutcome(t *testing.T, p *harness.Proc) string {
	t.Helper()
	p.WaitLine("start", patience)
	f := strings.Fields(p.NextLine(patience))
	p.Wait(patience)
	switch {
	case len(f) >= 1 && f[0] == "granted":
		return "granted"
	case len(f) >= 2 && f[0] == "error":
		return f[1]
	}
	t.Fatalf("%s: unexpected output %q", p.Name, f)
	return ""
}

// treeProbe tries the lock name (a path below mount m) without waiting:
// an O_NONBLOCK open of M/.try/NAME in mode (w: exclusive, r: shared),
// closed at once. It returns "granted" or the errno name.
func treeProbe(t *testing.T, e *harness.Env, m, name, mode string) string {
	t.Helper()
	return openOnce(t, e, inView(m, ".try", name), mode, true)
}

// treeWaitFree polls until an exclusive try of name on mount m succeeds,
// then until that try's own lease is gone too (see waitFree).
func treeWaitFree(t *testing.T, e *harness.Env, m, name string) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got := treeProbe(t, e, m, name, "w")
		return got == "granted", fmt.Sprintf("%s on %s still not free (exclusive try: %s)", name, m, got)
	})
	waitHolders(t, inView(m, "", name), 0)
}

// treeRequireHeld asserts that name is locked against an exclusive try
// through mount m.
func treeRequireHeld(t *testing.T, e *harness.Env, m, name string) {
	t.Helper()
	require.Equal(t, "EAGAIN", treeProbe(t, e, m, name, "w"), "exclusive try of %s through %s while it should be held", name, m)
}

// dirAttr is what stat reports of a path: file type and permission bits
// (with set-group-ID and sticky), owner and group.
type dirAttr struct {
	Mode     uint32 // st_mode: S_IFDIR|07777 for a directory
	UID, GID uint32
}

func (a dirAttr) String() string {
	return fmt.Sprintf("mode %#o uid %d gid %d", a.Mode, a.UID, a.GID)
}

// statAttr stats path (without following a symlink) within patience.
func statAttr(t *testing.T, path string) (dirAttr, error) {
	t.Helper()
	type res struct {
		a   dirAttr
		err error
	}
	ch := make(chan res, 1)
	go func() {
		var st unix.Stat_t
		err := unix.Lstat(path, &st)
		ch <- res{dirAttr{st.Mode, st.Uid, st.Gid}, err}
	}()
	select {
	case r := <-ch:
		return r.a, r.err
	case <-time.After(patience):
		t.Fatalf("stat %s did not return within %v", path, patience)
	}
	return dirAttr{}, nil
}

// dirWant is the attribute set of a lock directory with permission bits
// perm (07777) owned by uid:gid.
func dirWant(perm, uid, gid uint32) dirAttr { return dirAttr{unix.S_IFDIR | perm, uid, gid} }

// lockFileWant is what a lock file in a directory with attributes dir
// reports: the directory's owner and group, and its read and write bits
// (no execute, set-ID or sticky bit).
func lockFileWant(dir dirAttr) dirAttr {
	return dirAttr{unix.S_IFREG | dir.Mode&0o666, dir.UID, dir.GID}
}

// requireAttr asserts the attributes of path now.
func requireAttr(t *testing.T, path string, want dirAttr) {
	t.Helper()
	got, err := statAttr(t, path)
	require.NoError(t, err, "stat %s", path)
	require.Equal(t, want, got, "stat %s", path)
}

// waitAttr polls until path reports want (a change made through another
// daemon shows within the attribute timeout).
func waitAttr(t *testing.T, path string, want dirAttr) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got, err := statAttr(t, path)
		return err == nil && got == want, fmt.Sprintf("stat %s: %v (%v), want %v", path, got, err, want)
	})
}

// mkdirs creates the lock directories of paths (each below an existing
// one) as root, with the mode bits perm (07777, raw: os.FileMode would
// drop set-group-ID and sticky) set by chmod, independent of the test
// process's umask.
func mkdirs(t *testing.T, perm uint32, paths ...string) {
	t.Helper()
	for _, p := range paths {
		require.NoError(t, unix.Mkdir(p, perm), "mkdir %s", p)
		require.NoError(t, unix.Chmod(p, perm), "chmod %s", p)
	}
}

// mkdirP makes path and its missing parents as mkdir -p does: mkdir(2)
// of each level, an existing directory is fine; the mode is perm with the
// process's umask applied. Not os.MkdirAll: it stats the path first, and
// a free name in a lock directory is a lock file (every name exists), so
// it stops there with ENOTDIR.
func mkdirP(path string, perm uint32) error {
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			continue
		}
		err := unix.Mkdir(path[:i], perm)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return &os.PathError{Op: "mkdir", Path: path[:i], Err: err}
		}
	}
	return nil
}

// deepPath returns the relative path of n nested directories l00/l01/...
func deepPath(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf("l%02d", i)
	}
	return filepath.Join(parts...)
}

// dirEntries lists dir and returns its entries' names (sorted) with
// whether each is a directory, within patience.
func dirEntries(t *testing.T, dir string) map[string]bool {
	t.Helper()
	ents := withTimeout(t, patience, "readdir "+dir, func() ([]os.DirEntry, error) { return os.ReadDir(dir) })
	out := map[string]bool{}
	for _, de := range ents {
		out[de.Name()] = de.IsDir()
	}
	return out
}

// statusNames runs `lockfs status [--json] PATH` and returns the NAME
// column of its rows (or the names of its --json locks), sorted.
func statusNames(t *testing.T, e *harness.Env, path string, asJSON bool) []string {
	t.Helper()
	var names []string
	if asJSON {
		p := lockfsCmd(t, e, "status", "--json", path)
		require.Equal(t, 0, p.Wait(patience), "lockfs status --json %s: %s", path, p.Stderr())
		var rep struct {
			Locks []struct {
				Name  string `json:"name"`
				Error string `json:"error"`
			} `json:"locks"`
		}
		require.NoError(t, json.Unmarshal([]byte(p.Stdout()), &rep), "json: %s", p.Stdout())
		for _, l := range rep.Locks {
			assert.Empty(t, l.Error, "lock %s", l.Name)
			names = append(names, l.Name)
		}
	} else {
		p := lockfsCmd(t, e, "status", path)
		require.Equal(t, 0, p.Wait(patience), "lockfs status %s: %s", path, p.Stderr())
		lines := p.Lines()
		require.NotEmpty(t, lines, "lockfs status %s printed nothing", path)
		require.Equal(t, "NAME", strings.Fields(lines[0])[0], "header of lockfs status %s", path)
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 0 {
				names = append(names, f[0])
			}
		}
	}
	slices.Sort(names)
	return names
}

// The mount is default_permissions, and its root is by default what the
// flat namespace had: mode 0777 without the sticky bit, owned by the
// daemon (root). mkdir and mkdir -p make lock directories; ls lists
// subdirectories and held names; a name's identity is its full path; the
// views take paths; names in a missing directory do not exist; a
// directory is not a lock and a held name is not a directory.
func TestTreeBasics(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	m := d.Mountpoint

	ms, err := harness.Mounts()
	require.NoError(t, err)
	at := mountinfo.Lockfs(mountinfo.At(ms, m))
	require.Len(t, at, 1)
	assert.Contains(t, strings.Split(at[0].Super, ","), "default_permissions", "superblock options of the mount: %s", at[0].Super)
	requireAttr(t, m, dirWant(0o777, 0, 0))

	// mkdir, mkdir -p (through the shell, as users make them).
	mkdirs(t, 0o755, d.Path("team"), d.Path("other"))
	p := e.Bash(t, `mkdir -p "$M/team/app/deep" && echo ok`, "M="+m)
	p.WaitLine("ok", patience)
	require.Equal(t, 0, p.Wait(patience), p.Stderr())
	for _, dir := range []string{"team", "team/app", "team/app/deep"} {
		a, err := statAttr(t, d.Path(dir))
		require.NoError(t, err, dir)
		assert.Equal(t, uint32(unix.S_IFDIR), a.Mode&unix.S_IFMT, "%s is a directory", dir)
		assert.Equal(t, uint32(0), a.UID, "%s is owned by its creator (root)", dir)
	}
	requireAttr(t, d.Path("team"), dirWant(0o755, 0, 0))
	assert.Equal(t, map[string]bool{"app": true}, dirEntries(t, d.Path("team")), "ls of a directory with one subdirectory")
	assert.ErrorIs(t, unix.Mkdir(d.Path("team"), 0o755), unix.EEXIST, "mkdir of an existing directory")

	// A name's identity is its full path.
	h := shellHold(t, e, d.Path("team/deploy"), ">")
	treeRequireHeld(t, e, m, "team/deploy")
	assert.Equal(t, "granted", treeProbe(t, e, m, "deploy", "w"), "deploy is not team/deploy")
	assert.Equal(t, "granted", treeProbe(t, e, m, "other/deploy", "w"), "other/deploy is not team/deploy")
	assert.Equal(t, "granted", treeProbe(t, e, m, "team/app/deploy", "w"), "team/app/deploy is not team/deploy")
	// Each granted try's lease goes at its RELEASE, a little after its
	// close(2): until then ls would list deploy as held.
	for _, n := range []string{"deploy", "other/deploy", "team/app/deploy"} {
		waitHolders(t, d.Path(n), 0)
	}
	assert.Equal(t, map[string]bool{"app": true, "deploy": false}, dirEntries(t, d.Path("team")),
		"ls lists the subdirectory (a directory) and the held name (not one)")
	names, _ := listNames(t, m)
	assert.Equal(t, []string{"other", "team"}, names, "ls of the root lists the directories, not names held below them")
	requireAttr(t, d.Path("team/deploy"), lockFileWant(dirWant(0o755, 0, 0)))
	assert.Equal(t, "held", lockXattr(t, d.Path("team/deploy"), "user.lockfs.state"))

	// A held name is not a directory; a directory is not a lock.
	assert.ErrorIs(t, unix.Mkdir(d.Path("team/deploy"), 0o755), unix.EEXIST, "mkdir of a held name")
	for _, path := range []string{d.Path("team"), inView(m, ".try", "team"), inView(m, ".timeout/1", "team")} {
		assert.Equal(t, "EISDIR", openOnce(t, e, path, "w", false), "write open of the directory %s", path)
	}

	// The views take paths: .try, .timeout/SECS, .shared, .flock.
	assert.Equal(t, "EAGAIN", openOnce(t, e, inView(m, ".timeout/1", "team/deploy"), "w", false), ".timeout/1 of a held nested name")
	assert.Equal(t, "EAGAIN", treeProbe(t, e, m, "team/deploy", "r"), "a shared try of a held nested name")
	shellRelease(t, h)
	treeWaitFree(t, e, m, "team/deploy")

	r1 := shellHold(t, e, inView(m, ".shared", "team/app/s"), "<")
	r2 := shellHold(t, e, inView(m, ".timeout/5", "team/app/s"), "<")
	assert.Equal(t, "granted", treeProbe(t, e, m, "team/app/s", "r"), "a shared try next to two shared holders")
	assert.Equal(t, "EAGAIN", treeProbe(t, e, m, "team/app/s", "w"), "an exclusive try next to shared holders")
	assert.Equal(t, "shared", lockXattr(t, d.Path("team/app/s"), "user.lockfs.mode"))
	shellRelease(t, r1)
	shellRelease(t, r2)
	treeWaitFree(t, e, m, "team/app/s")

	// .flock/PATH: the open takes nothing, flock(2) on it does.
	needTool(t, "flock", "util-linux")
	f := e.Bash(t, `exec 9>"$P" || exit 1; echo opened; read _; flock -n 9 || exit 2; echo locked; read _; echo closed`,
		"P="+inView(m, ".flock", "team/app/f"))
	f.WaitLine("opened", patience)
	assert.Equal(t, "granted", treeProbe(t, e, m, "team/app/f", "w"), "the .flock open took the lock")
	waitHolders(t, d.Path("team/app/f"), 0) // the try's lease, released after its close(2), would fail flock -n
	f.Send("lock")
	f.WaitLine("locked", patience)
	treeRequireHeld(t, e, m, "team/app/f")
	f.Send("release")
	f.WaitLine("closed", patience)
	require.Equal(t, 0, f.Wait(patience))
	treeWaitFree(t, e, m, "team/app/f")

	// Names in a directory that does not exist cannot be reached. Every
	// valid name that is not a lock directory is a (free) lock file, as
	// at the top level (a read-only open of a free name works), so the
	// path stops there with ENOTDIR; only mkdir(2) sees no entry.
	for _, c := range []struct{ view, mode string }{
		{"", "w"}, {"", "rw"}, {".try", "w"}, {".try", "r"}, {".shared", "r"}, {".timeout/1", "w"}, {".flock", "r"},
	} {
		path := inView(m, c.view, "nodir/x")
		assert.Equal(t, "ENOTDIR", openOnce(t, e, path, c.mode, false), "open(%s) of %s", c.mode, path)
	}
	assert.Equal(t, "ENOTDIR", openOnce(t, e, inView(m, "", "team/nodir/x"), "w", false), "a missing directory below an existing one")
	assert.ErrorIs(t, unix.Mkdir(d.Path("nodir2/sub"), 0o755), unix.ENOENT, "mkdir below a missing directory")
	// nodir/sub: ENOTDIR while the kernel keeps the entry of the lock file
	// nodir from the opens above (the attribute timeout), ENOENT after.
	err = unix.Mkdir(d.Path("nodir/sub"), 0o755)
	assert.True(t, errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT), "mkdir below the lock file nodir: %v", err)
	for _, dir := range []string{"nodir", "nodir2"} {
		_, err := statAttr(t, d.Path(dir))
		require.NoError(t, err, "stat of the free name %s", dir)
		requireAttr(t, d.Path(dir), lockFileWant(dirWant(0o777, 0, 0)))
	}

	// rmdir of empty directories; afterwards their paths are free names.
	require.NoError(t, unix.Rmdir(d.Path("team/app/deep")))
	requireAttr(t, d.Path("team/app/deep"), lockFileWant(dirWant(0o755, 0, 0)))
	assert.Equal(t, "ENOTDIR", openOnce(t, e, d.Path("team/app/deep/x"), "w", false), "a name in a removed directory")
	require.False(t, d.Exited())
}

// rmdir fails with ENOTEMPTY while the directory has a subdirectory, or a
// name below it is held or waited on, through either of two daemons on
// one state directory; it succeeds once the names are released (a name
// only used before does not count), and the directory is then gone for
// both daemons.
func TestTreeRmdirTwoDaemons(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	treeRmdirAcross(t, e, a, b)
}

// treeRmdirAcross is the rmdir test on two daemons a and b sharing a
// backend (a state directory or an etcd prefix).
func treeRmdirAcross(t *testing.T, e *harness.Env, a, b *harness.Daemon) {
	t.Helper()
	mkdirs(t, 0o755, a.Path("r"), a.Path("r/s"))
	waitAttr(t, b.Path("r/s"), dirWant(0o755, 0, 0))
	assert.ErrorIs(t, unix.Rmdir(a.Path("r")), unix.ENOTEMPTY, "rmdir of a directory with a subdirectory")
	assert.ErrorIs(t, unix.Rmdir(b.Path("r")), unix.ENOTEMPTY, "rmdir through B of a directory with a subdirectory")

	// r/s/x held through A, waited on through B.
	h := shellHold(t, e, a.Path("r/s/x"), ">")
	for _, d := range []*harness.Daemon{a, b} {
		assert.ErrorIs(t, unix.Rmdir(d.Path("r/s")), unix.ENOTEMPTY, "rmdir through %s while A holds r/s/x", d.Mountpoint)
	}
	w := e.Waiter(t, b.Path("r/s/x"), "w")
	shellRelease(t, h)
	harness.Granted(t, w, patience)
	// Now held through B only.
	treeRequireHeld(t, e, a.Mountpoint, "r/s/x")
	for _, d := range []*harness.Daemon{a, b} {
		assert.ErrorIs(t, unix.Rmdir(d.Path("r/s")), unix.ENOTEMPTY, "rmdir through %s while B holds r/s/x", d.Mountpoint)
	}
	// A shared holder counts too.
	sh := shellHold(t, e, inView(a.Mountpoint, ".shared", "r/s/y"), "<")
	harness.Release(t, w)
	treeWaitFree(t, e, b.Mountpoint, "r/s/x")
	assert.ErrorIs(t, unix.Rmdir(b.Path("r/s")), unix.ENOTEMPTY, "rmdir through B while A holds r/s/y shared")
	shellRelease(t, sh)

	// A name used once and released does not count.
	require.Equal(t, "granted", openOnce(t, e, b.Path("r/s/used"), "w", false))
	harness.Eventually(t, patience, func() (bool, string) {
		err := unix.Rmdir(a.Path("r/s"))
		return err == nil, fmt.Sprintf("rmdir r/s through A after every release: %v", err)
	})
	require.NoError(t, unix.Rmdir(b.Path("r")), "rmdir through B of r, empty now")
	for _, d := range []*harness.Daemon{a, b} {
		// r is a free lock name again, not a directory: the path stops
		// there (see TestTreeBasics).
		harness.Eventually(t, patience, func() (bool, string) {
			got := openOnce(t, e, d.Path("r/s/x"), "w", false)
			return got == "ENOTDIR", fmt.Sprintf("open of r/s/x through %s after rmdir: %s", d.Mountpoint, got)
		})
		harness.Eventually(t, patience, func() (bool, string) {
			a, err := statAttr(t, d.Path("r"))
			return err == nil && a.Mode&unix.S_IFMT == unix.S_IFREG, fmt.Sprintf("stat of r through %s after rmdir: %v (%v)", d.Mountpoint, a, err)
		})
	}
	// The path can be made again, and used (also through A, which knew
	// the old directories).
	require.NoError(t, mkdirP(b.Path("r/s"), 0o755))
	waitAttr(t, a.Path("r/s"), dirWant(0o755&^currentUmask(t), 0, 0))
	harness.Eventually(t, patience, func() (bool, string) {
		got := openOnce(t, e, a.Path("r/s/x"), "w", false)
		return got == "granted", "open of r/s/x through A after it was made again through B: " + got
	})
	h = shellHold(t, e, a.Path("r/s/x"), ">")
	treeRequireHeld(t, e, b.Mountpoint, "r/s/x")
	shellRelease(t, h)
}

var umaskOnce = sync.OnceValue(func() uint32 {
	// Read from /proc: setting the umask to read it would race with the
	// other tests of the process.
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err == nil {
				return uint32(n)
			}
		}
	}
	return 0o022
})

// currentUmask is the test process's umask.
func currentUmask(t *testing.T) uint32 {
	t.Helper()
	return umaskOnce()
}

// Counter torture on a nested name across two daemons on one state
// directory: util-linux flock(1) on M/a/b/c/c and exec 9>M/a/b/c/c, two
// of each through each daemon, end exact; and the top-level name c, used
// by the same kind of workers at the same time, is another lock with its
// own exact counter.
func TestTreeNestedCounterTwoDaemons(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{LogLevel: "info"})
	treeNestedCounter(t, e, a, b)
}

// treeNestedCounter runs the nested counter torture on daemons a and b
// sharing a backend.
func treeNestedCounter(t *testing.T, e *harness.Env, a, b *harness.Daemon) {
	t.Helper()
	flock := needTool(t, "flock", "util-linux")
	const increments = 40
	require.NoError(t, mkdirP(a.Path("a/b/c"), 0o755))
	waitAttr(t, b.Path("a/b/c"), dirWant(0o755&^currentUmask(t), 0, 0))
	dir := t.TempDir()
	nested, top := filepath.Join(dir, "nested"), filepath.Join(dir, "top")
	for _, c := range []string{nested, top} {
		require.NoError(t, os.WriteFile(c, []byte("0\n"), 0o644))
	}
	start := time.Now()
	var ps []*harness.Proc
	for i, d := range []*harness.Daemon{a, b, a, b} {
		for _, w := range []struct{ m, counter string }{{d.Path("a/b/c"), nested}, {d.Mountpoint, top}} {
			env := []string{"M=" + w.m, "C=" + w.counter, "N=" + strconv.Itoa(increments)}
			if i < 2 {
				ps = append(ps, e.Bash(t, counterWorker, env...))
			} else {
				ps = append(ps, harness.Start(t, harness.ProcOptions{Name: "flock worker", Path: e.BashPath,
					Args: []string{"-c", toolLoop, "bash", flock, filepath.Join(w.m, "c")},
					Env:  append(env, "SECTION="+counterSection)}))
			}
		}
	}
	for _, p := range ps {
		p.WaitLine("done", 3*time.Minute)
		require.Equal(t, 0, p.Wait(patience), "%s: %s", p.Name, p.Stderr())
	}
	t.Logf("%d workers x %d increments on a/b/c/c and c in %v", len(ps), increments, time.Since(start))
	for _, c := range []string{nested, top} {
		got, err := os.ReadFile(c)
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(4*increments), strings.TrimSpace(string(got)), "counter %s", filepath.Base(c))
	}
}

// mkdir -p of 32 levels works; a name at the bottom is one lock through
// two daemons on one state directory, and the second daemon lists each
// level.
func TestTreeDeep(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	const depth = 32
	deep := deepPath(depth)
	p := e.Bash(t, `mkdir -p "$M/$D" && echo ok`, "M="+a.Mountpoint, "D="+deep)
	p.WaitLine("ok", patience)
	require.Equal(t, 0, p.Wait(patience), "mkdir -p of %d levels: %s", depth, p.Stderr())
	waitAttr(t, b.Path(deep), dirWant(0o777&^currentUmask(t), 0, 0))
	parts := strings.Split(deep, "/")
	for i := 1; i < depth; i++ {
		assert.Equal(t, map[string]bool{parts[i]: true}, dirEntries(t, b.Path(filepath.Join(parts[:i]...))),
			"ls through B of level %d", i)
	}

	name := filepath.Join(deep, "x")
	h := shellHold(t, e, a.Path(name), ">")
	treeRequireHeld(t, e, b.Mountpoint, name)
	treeRequireHeld(t, e, a.Mountpoint, name)
	assert.Equal(t, "granted", treeProbe(t, e, b.Mountpoint, filepath.Join(filepath.Dir(deep), "x"), "w"),
		"the name one level up is another lock")
	w := e.Waiter(t, b.Path(name), "w")
	shellRelease(t, h)
	harness.Granted(t, w, patience)
	treeRequireHeld(t, e, a.Mountpoint, name)
	harness.Release(t, w)
	treeWaitFree(t, e, a.Mountpoint, name)
}

// A wide tree: 10,000 directories in one directory, made through one
// daemon, are all listed by a second daemon on the same state directory,
// and a name in the last one is one lock through both.
func TestTreeWide(t *testing.T) {
	e := setup(t)
	a, b := daemonPair(t, e, harness.DaemonConfig{LogLevel: "info"})
	const width, workers = 10000, 8
	require.NoError(t, os.Mkdir(a.Path("w"), 0o755))
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for k := range workers {
		wg.Go(func() {
			for i := k; i < width; i += workers {
				if err := unix.Mkdir(a.Path("w/"+strconv.Itoa(i)), 0o755); err != nil {
					errs[k] = fmt.Errorf("mkdir w/%d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	t.Logf("%d mkdirs in %v", width, time.Since(start))

	ents := dirEntries(t, b.Path("w"))
	require.Len(t, ents, width, "ls through B")
	for i := range width {
		if !ents[strconv.Itoa(i)] {
			t.Fatalf("ls through B: w/%d missing or not a directory", i)
		}
	}
	last := "w/" + strconv.Itoa(width-1) + "/x"
	h := shellHold(t, e, b.Path(last), ">")
	treeRequireHeld(t, e, a.Mountpoint, last)
	assert.Equal(t, "granted", treeProbe(t, e, a.Mountpoint, "w/0/x", "w"), "w/0/x is another lock")
	assert.ErrorIs(t, unix.Rmdir(a.Path("w")), unix.ENOTEMPTY)
	shellRelease(t, h)
	treeWaitFree(t, e, a.Mountpoint, last)
}

// lockfs status shows full paths, and takes a subtree: `lockfs status
// M/team` lists the names below team (at any depth) and nothing else.
func TestTreeStatusSubtree(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	m := d.Mountpoint
	require.NoError(t, mkdirP(d.Path("team/app"), 0o755))
	require.NoError(t, mkdirP(d.Path("other"), 0o755))
	require.NoError(t, mkdirP(d.Path("teamx"), 0o755)) // a prefix of its name is not a subtree

	var hs []*harness.Proc
	for _, n := range []string{"team/app/deploy", "team/x", "other/y", "z", "teamx/q"} {
		hs = append(hs, shellHold(t, e, d.Path(n), ">"))
	}
	w := e.Waiter(t, d.Path("team/x"), "w")

	all := []string{"other/y", "team/app/deploy", "team/x", "teamx/q", "z"}
	for _, asJSON := range []bool{false, true} {
		assert.Equal(t, all, statusNames(t, e, m, asJSON), "lockfs status M (json %v)", asJSON)
		assert.Equal(t, []string{"team/app/deploy", "team/x"}, statusNames(t, e, d.Path("team"), asJSON), "lockfs status M/team (json %v)", asJSON)
		assert.Equal(t, []string{"team/app/deploy"}, statusNames(t, e, d.Path("team/app"), asJSON), "lockfs status M/team/app (json %v)", asJSON)
		assert.Equal(t, []string{"team/app/deploy"}, statusNames(t, e, d.Path("team/app")+"/", asJSON),
			"lockfs status M/team/app/ (trailing slash, json %v)", asJSON)
	}
	row := statusRow(t, e, d.Path("team"), "team/x")
	assert.Equal(t, []string{"team/x", "held", "exclusive"}, row[:3])
	assert.Equal(t, "1", row[4], "WAITERS of team/x")

	for _, h := range hs {
		shellRelease(t, h)
	}
	harness.Granted(t, w, patience)
	harness.Release(t, w)
	harness.Eventually(t, patience, func() (bool, string) {
		got := statusNames(t, e, m, false)
		return len(got) == 0, "lockfs status M after every release: " + strings.Join(got, " ")
	})
}
