package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Permissions of lock directories (issue 14). The mount is
// default_permissions: the kernel checks access with the attributes lockfs
// reports, and the daemon checks what the kernel cannot see (a read-only
// open that locks, a lock call). Taking a lock by any interface needs write
// permission on its directory, reading the names needs read permission,
// reaching them search permission.
//
// The tests run clients as three unprivileged users, each without
// supplementary groups (the daemon sees a caller's uid and gid only):

// treeUser is an unprivileged user the permission tests run clients as.
type treeUser struct {
	name     string
	uid, gid uint32
}

var (
	// alice owns the directories of the tests.
	alice = treeUser{"alice", 65533, 65533}
	// bob is anybody else (nobody).
	bob = treeUser{"bob", 65534, 65534}
	// carol is in the team group (her primary group), not its owner.
	carol = treeUser{"carol", 65532, teamGID}
)

// teamGID is the group of the group tests.
const teamGID = 65530

// cred is the user's credential, without supplementary groups.
func (u treeUser) cred() *syscall.Credential { return &syscall.Credential{Uid: u.uid, Gid: u.gid} }

func (u treeUser) ids() string { return fmt.Sprintf("%d:%d", u.uid, u.gid) }

// runAs runs argv as u to its end and returns its exit code, stdout and
// stderr.
func runAs(t *testing.T, u treeUser, argv ...string) (int, string, string) {
	t.Helper()
	p := harness.Start(t, harness.ProcOptions{Name: u.name + " " + strings.Join(argv, " "), Path: argv[0], Args: argv[1:],
		Credential: u.cred()})
	code := p.Wait(patience)
	return code, p.Stdout(), p.Stderr()
}

// shAs runs a bash script as u (positional parameters args) to its end.
func shAs(t *testing.T, e *harness.Env, u treeUser, script string, args ...string) (int, string, string) {
	t.Helper()
	return runAs(t, u, append([]string{e.BashPath, "-c", script, "bash"}, args...)...)
}

// openAs opens path as u with the Go client in mode (w: the shell's >,
// O_WRONLY|O_CREAT|O_TRUNC; a: >>; rw: <>; r: <), closes it at once if
// it was granted, and returns "granted" or the errno name.
func openAs(t *testing.T, e *harness.Env, u treeUser, mode, path string) string {
	t.Helper()
	p := harness.Start(t, harness.ProcOptions{Name: "lockclient " + u.name + " " + path, Path: e.Client,
		Args: []string{"-mode", mode, path}, Credential: u.cred()})
	p.CloseStdin()
	return openOutcome(t, p)
}

// holdAs starts a bash as u that opens path with redir on fd 9 and keeps
// it until a line on stdin (see shellHold).
func holdAs(t *testing.T, e *harness.Env, u treeUser, path, redir string) *harness.Proc {
	t.Helper()
	p := harness.Start(t, harness.ProcOptions{Name: "bash holder " + u.name, Path: e.BashPath,
		Args:       []string{"-c", `exec 9` + redir + `"$1" || exit 1; echo granted; read _; exec 9>&-; echo closed`, "bash", path},
		Credential: u.cred()})
	p.WaitLine("granted", patience)
	return p
}

// pyLockCall takes a lock by a lock call and releases it: argv[1] is a
// path opened read-only (r) or write-only (w) as argv[2] says, with
// O_CREAT as flock(1) opens (an unheld name need not exist before), or the
// number of an inherited descriptor; argv[3] is flock or lockf, argv[4]
// ex or sh. Blocking calls: the names the tests use are free, so only a
// refusal can fail them. It prints "locked", or "error ERRNO STAGE" where
// STAGE is open or the call that failed (a user who cannot reach the
// directory is refused by the open already).
const pyLockCall = `import errno, fcntl, os, sys
path, omode, call, kind = sys.argv[1:5]
def fail(e, stage):
    print("error", errno.errorcode.get(e.errno, e.errno), stage)
    sys.exit(0)
if path.isdigit():
    fd = int(path)
else:
    try:
        fd = os.open(path, (os.O_RDONLY if omode == "r" else os.O_WRONLY) | os.O_CREAT, 0o666)
    except OSError as e:
        fail(e, "open")
fn = fcntl.flock if call == "flock" else fcntl.lockf
try:
    fn(fd, fcntl.LOCK_EX if kind == "ex" else fcntl.LOCK_SH)
except OSError as e:
    fail(e, call)
print("locked")
fn(fd, fcntl.LOCK_UN)
os.close(fd)
`

// lockCallAs runs pyLockCall as u on its own descriptor of path (opened
// in omode) and returns "locked" or the errno name.
func lockCallAs(t *testing.T, e *harness.Env, u treeUser, path, omode, call, kind string) string {
	t.Helper()
	py := needPython(t, e)
	code, out, errOut := runAs(t, u, py, "-c", pyLockCall, path, omode, call, kind)
	require.Equal(t, 0, code, "python %s %s as %s: %s", call, path, u.name, errOut)
	return lockCallResult(t, out)
}

// lockCallInherited opens path for writing as root on descriptor 9 (path
// is a M/.flock/NAME, whose open takes nothing), then runs pyLockCall as u
// on that inherited descriptor: the lock call is u's, on a descriptor u
// could not have opened.
func lockCallInherited(t *testing.T, e *harness.Env, u treeUser, path, call, kind string) string {
	t.Helper()
	py := needPython(t, e)
	p := e.Bash(t, `exec 9>"$P" || exit 1; exec "$SETPRIV" --reuid "$U" --regid "$G" --clear-groups -- "$PY" -c "$SCRIPT" 9 w "$CALL" "$KIND"`,
		"P="+path, "SETPRIV="+setprivPath(t), "U="+strconv.Itoa(int(u.uid)), "G="+strconv.Itoa(int(u.gid)),
		"PY="+py, "SCRIPT="+pyLockCall, "CALL="+call, "KIND="+kind)
	require.Equal(t, 0, p.Wait(patience), "python %s on an inherited descriptor as %s: %s", call, u.name, p.Stderr())
	return lockCallResult(t, p.Stdout())
}

func lockCallResult(t *testing.T, out string) string {
	t.Helper()
	f := strings.Fields(out)
	switch {
	case len(f) == 1 && f[0] == "locked":
		return "locked"
	case len(f) == 3 && f[0] == "error":
		return f[1]
	}
	t.Fatalf("lock call: unexpected output %q", out)
	return ""
}

// pyGetxattr prints the extended attribute argv[2] of argv[1], or
// "error ERRNO".
const pyGetxattr = `import errno, os, sys
try:
    print(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False).decode())
except OSError as e:
    print("error", errno.errorcode.get(e.errno, e.errno))
`

// getxattrAs reads attr of path as u (getxattr(2), as getfattr does).
func getxattrAs(t *testing.T, e *harness.Env, u treeUser, path, attr string) string {
	t.Helper()
	code, out, errOut := runAs(t, u, needPython(t, e), "-c", pyGetxattr, path, attr)
	require.Equal(t, 0, code, "getxattr as %s: %s", u.name, errOut)
	return strings.TrimSpace(out)
}

// usersCanReach makes the daemon's mountpoint and the test binaries
// reachable by the unprivileged users (t.TempDir and the run's root are
// 0700).
func usersCanReach(t *testing.T, e *harness.Env, ds ...*harness.Daemon) {
	t.Helper()
	for _, d := range ds {
		traversableTo(t, e, d.Mountpoint)
	}
	traversableTo(t, e, e.Client)
	traversableTo(t, e, e.Lockfs)
}

// openForms are the opens that take a lock: the view, the mode, and what
// the shell calls it.
var openForms = []struct{ view, mode, what string }{
	{"", "w", "exec 9>M/NAME (O_WRONLY|O_CREAT|O_TRUNC)"},
	{"", "a", "exec 9>>M/NAME"},
	{"", "rw", "exec 9<>M/NAME"},
	{".shared", "r", "exec 9<M/.shared/NAME (read-only)"},
	{".shared", "w", "exec 9>M/.shared/NAME"},
	{".try", "w", "exec 9>M/.try/NAME"},
	{".try", "r", "exec 9<M/.try/NAME (shared try)"},
	{".timeout/5", "w", "exec 9>M/.timeout/5/NAME"},
	{".timeout/5", "r", "exec 9<M/.timeout/5/NAME"},
}

// requireLockRefused asserts that u takes name (below mount m) by no open
// form and no lock call: every attempt fails with EACCES, at once, and
// leaves nothing held or queued.
func requireLockRefused(t *testing.T, e *harness.Env, u treeUser, m, name string) {
	t.Helper()
	flock := needTool(t, "flock", "util-linux")
	for _, f := range openForms {
		assert.Equal(t, "EACCES", openAs(t, e, u, f.mode, inView(m, f.view, name)), "%s by %s", f.what, u.name)
	}
	code, _, errOut := shAs(t, e, u, `exec 9>"$1"`, filepath.Join(m, name))
	assert.NotEqual(t, 0, code, "bash exec 9> by %s", u.name)
	assert.Contains(t, errOut, "Permission denied", "bash exec 9> by %s", u.name)

	// Lock calls: flock(1) by path (it opens read-only) and on a
	// read-only descriptor; Python's flock and lockf (fcntl F_SETLKW) on
	// a read-only descriptor of M/NAME and of M/.flock/NAME; and flock and
	// lockf on a writable descriptor that root opened and passed on.
	code, out, errOut := runAs(t, u, flock, filepath.Join(m, name), "echo", "locked")
	assert.NotEqual(t, 0, code, "flock(1) M/NAME by %s", u.name)
	assert.NotContains(t, out, "locked")
	assert.Contains(t, errOut, "Permission denied", "flock(1) M/NAME by %s", u.name)
	code, out, errOut = shAs(t, e, u, `exec 9<"$1" || { echo open failed; exit 0; }; "$2" 9 && echo locked; exit 0`, inView(m, ".flock", name), flock)
	assert.Equal(t, 0, code, errOut)
	assert.Empty(t, strings.TrimSpace(out), "exec 9<M/.flock/NAME; flock 9 by %s: the read-only open succeeds (it takes nothing), flock fails", u.name)
	assert.Contains(t, errOut, "Permission denied", "flock 9 by %s", u.name)
	for _, view := range []string{"", ".flock"} {
		path := inView(m, view, name)
		assert.Equal(t, "EACCES", lockCallAs(t, e, u, path, "r", "flock", "ex"), "python flock(LOCK_EX) on a read-only descriptor of %s by %s", path, u.name)
		assert.Equal(t, "EACCES", lockCallAs(t, e, u, path, "r", "flock", "sh"), "python flock(LOCK_SH) on a read-only descriptor of %s by %s", path, u.name)
		assert.Equal(t, "EACCES", lockCallAs(t, e, u, path, "r", "lockf", "sh"), "python lockf(LOCK_SH) (F_SETLKW F_RDLCK) on a read-only descriptor of %s by %s", path, u.name)
	}
	for _, call := range []string{"flock", "lockf"} {
		assert.Equal(t, "EACCES", lockCallInherited(t, e, u, inView(m, ".flock", name), call, "ex"),
			"python %s(LOCK_EX) by %s on a writable descriptor root opened", call, u.name)
	}
	// Nothing was taken or queued: the name is free and not listed.
	assert.Equal(t, "granted", treeProbe(t, e, m, name, "w"), "%s after the refusals", name)
	waitHolders(t, inView(m, "", name), 0) // the try's own lease goes at its RELEASE, after close(2)
	_, listed := dirEntries(t, filepath.Join(m, filepath.Dir(name)))[filepath.Base(name)]
	assert.False(t, listed, "%s is listed after the refusals: something is held or queued", name)
}

// requireLockAllowed asserts that u takes name (below mount m) by every
// open form and lock call.
func requireLockAllowed(t *testing.T, e *harness.Env, u treeUser, m, name string) {
	t.Helper()
	flock := needTool(t, "flock", "util-linux")
	for _, f := range openForms {
		assert.Equal(t, "granted", openAs(t, e, u, f.mode, inView(m, f.view, name)), "%s by %s", f.what, u.name)
		treeWaitFree(t, e, m, name)
	}
	code, out, errOut := runAs(t, u, flock, filepath.Join(m, name), "echo", "locked")
	assert.Equal(t, 0, code, "flock(1) M/NAME by %s: %s", u.name, errOut)
	assert.Equal(t, "locked", strings.TrimSpace(out))
	for _, view := range []string{"", ".flock"} {
		path := inView(m, view, name)
		assert.Equal(t, "locked", lockCallAs(t, e, u, path, "r", "flock", "ex"), "python flock on %s by %s", path, u.name)
		assert.Equal(t, "locked", lockCallAs(t, e, u, path, "r", "lockf", "sh"), "python lockf(LOCK_SH) on %s by %s", path, u.name)
	}
	assert.Equal(t, "locked", lockCallAs(t, e, u, inView(m, ".flock", name), "w", "lockf", "ex"), "python lockf(LOCK_EX) on M/.flock/NAME by %s", u.name)
	for _, call := range []string{"flock", "lockf"} {
		assert.Equal(t, "locked", lockCallInherited(t, e, u, inView(m, ".flock", name), call, "ex"),
			"python %s(LOCK_EX) by %s on a writable descriptor root opened", call, u.name)
	}
	treeWaitFree(t, e, m, name)
}

// A user without write permission on a lock directory gets EACCES taking
// a lock in it by every open form and every lock call, while its owner
// (and root) lock normally and exclude each other; a member of a group
// with write permission locks too. A user who may only read the directory
// lists it, stats and reads the attributes of its names and runs lockfs
// status on it, but cannot lock, break (rm), mkdir or chmod there; without
// search permission even that is refused.
func TestTreeNoWriteNoLock(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	usersCanReach(t, e, d)
	m := d.Mountpoint
	mkdirs(t, 0o755, d.Path("team"), d.Path("team/app"))
	require.NoError(t, os.Chown(d.Path("team"), int(alice.uid), teamGID))
	teamAttr := dirWant(0o755, alice.uid, teamGID)
	requireAttr(t, d.Path("team"), teamAttr)

	t.Run("others", func(t *testing.T) { requireLockRefused(t, e, bob, m, "team/x") })
	t.Run("group-without-write", func(t *testing.T) { requireLockRefused(t, e, carol, m, "team/x") })
	t.Run("owner", func(t *testing.T) { requireLockAllowed(t, e, alice, m, "team/x") })
	t.Run("root", func(t *testing.T) { requireLockAllowed(t, e, treeUser{"root", 0, 0}, m, "team/x") })
	// team/app is root's 0755: alice may not lock there either.
	assert.Equal(t, "EACCES", openAs(t, e, alice, "w", d.Path("team/app/x")), "alice in root's team/app")

	// The owner's lock excludes root and others; the others can inspect it.
	h := holdAs(t, e, alice, d.Path("team/x"), ">")
	treeRequireHeld(t, e, m, "team/x")
	requireAttr(t, d.Path("team/x"), lockFileWant(teamAttr))
	code, out, errOut := runAs(t, bob, "ls", "-1", d.Path("team"))
	require.Equal(t, 0, code, "ls as bob: %s", errOut)
	assert.Equal(t, []string{"app", "x"}, strings.Fields(out), "ls of team as bob")
	code, out, errOut = runAs(t, bob, "stat", "-c", "%u %g %a", d.Path("team/x"))
	require.Equal(t, 0, code, "stat as bob: %s", errOut)
	assert.Equal(t, "65533 65530 644", strings.TrimSpace(out), "a lock file shows its directory's owner and mode, not its holder")
	assert.Equal(t, "held", getxattrAs(t, e, bob, d.Path("team/x"), "user.lockfs.state"), "getxattr as bob")
	assert.Equal(t, "exclusive", getxattrAs(t, e, bob, d.Path("team/x"), "user.lockfs.mode"), "getxattr as bob")
	holders := strings.Fields(getxattrAs(t, e, bob, d.Path("team/x"), "user.lockfs.holders"))
	require.NotEmpty(t, holders)
	assert.Equal(t, "65533", holders[0], "the holder's uid in user.lockfs.holders")
	code, out, errOut = runAs(t, bob, e.Lockfs, "status", d.Path("team"))
	require.Equal(t, 0, code, "lockfs status as bob: %s", errOut)
	assert.Contains(t, out, "\nteam/x ", "lockfs status M/team as bob")

	code, _, errOut = runAs(t, bob, "rm", "-f", d.Path("team/x"))
	assert.NotEqual(t, 0, code, "rm (break) by bob")
	assert.Contains(t, errOut, "Permission denied", "rm by bob in a directory he may not write")
	code, _, errOut = runAs(t, bob, "mkdir", d.Path("team/sub"))
	assert.NotEqual(t, 0, code, "mkdir by bob")
	assert.Contains(t, errOut, "Permission denied")
	code, _, errOut = runAs(t, bob, "chmod", "777", d.Path("team"))
	assert.NotEqual(t, 0, code, "chmod by bob")
	assert.Contains(t, errOut, "Operation not permitted")
	code, _, errOut = runAs(t, alice, "chown", strconv.Itoa(int(bob.uid)), d.Path("team"))
	assert.NotEqual(t, 0, code, "chown by the owner (only root may)")
	assert.Contains(t, errOut, "Operation not permitted")
	treeRequireHeld(t, e, m, "team/x")
	requireAttr(t, d.Path("team"), teamAttr)

	// Group write: the owner lets the group write; carol locks, bob does not.
	code, _, errOut = runAs(t, alice, "chmod", "775", d.Path("team"))
	require.Equal(t, 0, code, "chmod by the owner: %s", errOut)
	requireAttr(t, d.Path("team"), dirWant(0o775, alice.uid, teamGID))
	h.Send("release")
	h.WaitLine("closed", patience)
	treeWaitFree(t, e, m, "team/x")
	assert.Equal(t, "granted", openAs(t, e, carol, "w", d.Path("team/x")), "carol, in the group, with group write")
	assert.Equal(t, "granted", openAs(t, e, carol, "r", inView(m, ".shared", "team/x")), "carol, shared")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "r", inView(m, ".shared", "team/x")), "bob, not in the group")

	// No search permission: nothing below team can be reached.
	code, _, errOut = runAs(t, alice, "chmod", "700", d.Path("team"))
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "error EACCES", getxattrAs(t, e, bob, d.Path("team/x"), "user.lockfs.state"), "getxattr without search permission")
	code, _, errOut = runAs(t, bob, "ls", d.Path("team"))
	assert.NotEqual(t, 0, code, "ls without read permission")
	assert.Contains(t, errOut, "Permission denied")
	assert.Equal(t, "EACCES", openAs(t, e, carol, "w", d.Path("team/x")), "carol after chmod 700")
	assert.Equal(t, "EACCES", openAs(t, e, carol, "w", inView(m, ".try", "team/x")), "carol after chmod 700, .try")
	assert.Equal(t, "granted", openAs(t, e, alice, "w", d.Path("team/x")), "the owner after chmod 700")
}

// chmod and chown of a lock directory, made through one daemon, take
// effect through a second daemon on the same state directory (within the
// attribute timeout, here 200ms), and after both restart.
func TestTreeAttrsTwoDaemonsAndRestart(t *testing.T) {
	e := setup(t)
	sd := t.TempDir()
	treeAttrsShared(t, e, func(t *testing.T) *harness.Daemon {
		return e.StartDaemon(t, harness.DaemonConfig{StateDir: sd, Args: []string{"--attr-timeout", "200ms"}})
	})
}

// treeAttrsShared is the chmod/chown test on daemons made by start, which
// share one backend.
func treeAttrsShared(t *testing.T, e *harness.Env, start func(t *testing.T) *harness.Daemon) {
	t.Helper()
	a, b := start(t), start(t)
	usersCanReach(t, e, a, b)
	mkdirs(t, 0o755, a.Path("team"))
	require.NoError(t, os.Chown(a.Path("team"), int(alice.uid), int(alice.gid)))
	waitAttr(t, b.Path("team"), dirWant(0o755, alice.uid, alice.gid))

	// waitOpen polls until u's open of name through d gives want.
	waitOpen := func(u treeUser, d *harness.Daemon, mode, name, want string) {
		t.Helper()
		harness.Eventually(t, patience, func() (bool, string) {
			got := openAs(t, e, u, mode, d.Path(name))
			return got == want, fmt.Sprintf("%s's open(%s) of %s through %s: %s, want %s", u.name, mode, name, d.Mountpoint, got, want)
		})
	}
	waitOpen(bob, b, "w", "team/x", "EACCES")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "r", inView(b.Mountpoint, ".shared", "team/x")), "bob, shared, through B")
	assert.Equal(t, "EACCES", lockCallAs(t, e, bob, b.Path("team/x"), "r", "flock", "ex"), "bob's flock through B")
	// The owner's lock through B excludes through A.
	h := holdAs(t, e, alice, b.Path("team/x"), ">")
	treeRequireHeld(t, e, a.Mountpoint, "team/x")
	h.Send("release")
	h.WaitLine("closed", patience)
	treeWaitFree(t, e, a.Mountpoint, "team/x")

	// The owner opens the directory to everybody through B: bob locks
	// through A.
	code, _, errOut := runAs(t, alice, "chmod", "777", b.Path("team"))
	require.Equal(t, 0, code, "chmod by the owner through B: %s", errOut)
	waitAttr(t, a.Path("team"), dirWant(0o777, alice.uid, alice.gid))
	waitOpen(bob, a, "w", "team/x", "granted")
	assert.Equal(t, "locked", lockCallAs(t, e, bob, a.Path("team/x"), "r", "flock", "ex"), "bob's flock through A after chmod 777")

	// Root gives it to bob through A; bob, now its owner, closes it to
	// everybody else through B.
	require.NoError(t, os.Chown(a.Path("team"), int(bob.uid), int(bob.gid)))
	waitAttr(t, b.Path("team"), dirWant(0o777, bob.uid, bob.gid))
	harness.Eventually(t, patience, func() (bool, string) {
		code, _, errOut := runAs(t, bob, "chmod", "700", b.Path("team"))
		return code == 0, "chmod 700 by the new owner through B: " + errOut
	})
	waitAttr(t, a.Path("team"), dirWant(0o700, bob.uid, bob.gid))
	waitOpen(alice, a, "w", "team/x", "EACCES")
	assert.Equal(t, "EACCES", openAs(t, e, alice, "r", inView(a.Mountpoint, ".shared", "team/x")), "alice, shared, through A")
	assert.Equal(t, "granted", openAs(t, e, bob, "w", a.Path("team/x")), "bob through A")
	assert.Equal(t, "granted", openAs(t, e, bob, "w", b.Path("team/x")), "bob through B")

	// Both daemons stop; a new one on the same backend has the directory
	// with its last owner and mode.
	for _, d := range []*harness.Daemon{a, b} {
		d.Signal(unix.SIGTERM)
		require.Equal(t, 0, d.Wait(patience), "exit code of %s", d.Mountpoint)
	}
	c := start(t)
	usersCanReach(t, e, c)
	requireAttr(t, c.Path("team"), dirWant(0o700, bob.uid, bob.gid))
	names, _ := listNames(t, c.Mountpoint)
	assert.Equal(t, []string{"team"}, names, "ls of the root after the restart")
	assert.Equal(t, "EACCES", openAs(t, e, alice, "w", c.Path("team/x")), "alice after the restart")
	assert.Equal(t, "EACCES", lockCallAs(t, e, carol, inView(c.Mountpoint, ".flock", "team/x"), "r", "flock", "ex"), "carol's flock after the restart")
	assert.Equal(t, "granted", openAs(t, e, bob, "w", c.Path("team/x")), "bob after the restart")
	// And a change after the restart is kept too.
	code, _, errOut = runAs(t, bob, "chmod", "770", c.Path("team"))
	require.Equal(t, 0, code, errOut)
	requireAttr(t, c.Path("team"), dirWant(0o770, bob.uid, bob.gid))
}

// A new directory's owner is its creator and its mode comes from the
// request and the umask; a set-group-ID directory passes its group and the
// set-group-ID bit on to new subdirectories (at every level), and its lock
// files show its group.
func TestTreeSetgid(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	usersCanReach(t, e, d)
	mkdirs(t, 0o777, d.Path("p"))
	mkdirs(t, 0o2775, d.Path("g"))
	require.NoError(t, os.Chown(d.Path("g"), int(alice.uid), teamGID))
	require.NoError(t, unix.Chmod(d.Path("g"), 0o2775)) // in case chown cleared set-group-ID
	requireAttr(t, d.Path("g"), dirWant(0o2775, alice.uid, teamGID))

	mk := func(u treeUser, umask, path string, mode ...string) {
		t.Helper()
		code, _, errOut := shAs(t, e, u, `umask "$1" && shift && mkdir "$@"`, append([]string{umask}, append(mode, path)...)...)
		require.Equal(t, 0, code, "mkdir %s as %s: %s", path, u.name, errOut)
	}
	mk(alice, "022", d.Path("p/a"))
	requireAttr(t, d.Path("p/a"), dirWant(0o755, alice.uid, alice.gid))
	mk(bob, "077", d.Path("p/b"))
	requireAttr(t, d.Path("p/b"), dirWant(0o700, bob.uid, bob.gid))
	mk(bob, "000", d.Path("p/c"), "-m", "0751")
	requireAttr(t, d.Path("p/c"), dirWant(0o751, bob.uid, bob.gid))

	mk(alice, "022", d.Path("g/sub"))
	requireAttr(t, d.Path("g/sub"), dirWant(0o2755, alice.uid, teamGID))
	mk(alice, "027", d.Path("g/sub/deeper"))
	requireAttr(t, d.Path("g/sub/deeper"), dirWant(0o2750, alice.uid, teamGID))
	mk(carol, "002", d.Path("g/c"))
	requireAttr(t, d.Path("g/c"), dirWant(0o2775, carol.uid, teamGID))
	h := shellHold(t, e, d.Path("g/sub/x"), ">")
	requireAttr(t, d.Path("g/sub/x"), lockFileWant(dirWant(0o2755, alice.uid, teamGID)))
	shellRelease(t, h)

	// The inherited group grants: carol (group) may write g/c's siblings
	// only where the group may write.
	assert.Equal(t, "granted", openAs(t, e, carol, "w", d.Path("g/x")), "carol in g (group write)")
	assert.Equal(t, "EACCES", openAs(t, e, carol, "w", d.Path("g/sub/x")), "carol in g/sub (2755)")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "w", d.Path("g/x")), "bob in g")
}

// lockfs mount --root-mode and --root-owner set the root directory's mode
// and owner (USER[:GROUP], by number or by name), which the kernel then
// enforces for names at the top.
func TestTreeRootModeOwner(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--root-mode", "0755", "--root-owner", alice.ids()}})
	usersCanReach(t, e, d)
	requireAttr(t, d.Mountpoint, dirWant(0o755, alice.uid, alice.gid))
	h := shellHold(t, e, d.Path("held"), ">")
	requireAttr(t, d.Path("held"), lockFileWant(dirWant(0o755, alice.uid, alice.gid)))
	shellRelease(t, h)
	assert.Equal(t, "EACCES", openAs(t, e, bob, "w", d.Path("x")), "bob at the top of a 0755 root")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "r", inView(d.Mountpoint, ".shared", "x")), "bob, shared")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "w", inView(d.Mountpoint, ".try", "x")), "bob, try")
	assert.Equal(t, "EACCES", lockCallAs(t, e, bob, d.Path("x"), "r", "flock", "ex"), "bob's flock")
	code, _, errOut := runAs(t, bob, "mkdir", d.Path("bobs"))
	assert.NotEqual(t, 0, code, "mkdir by bob in a 0755 root")
	assert.Contains(t, errOut, "Permission denied")
	assert.Equal(t, "granted", openAs(t, e, alice, "w", d.Path("x")), "the root's owner")
	code, _, errOut = runAs(t, alice, "mkdir", d.Path("alices"))
	assert.Equal(t, 0, code, "mkdir by the root's owner: %s", errOut)
	assert.Equal(t, "granted", openOnce(t, e, d.Path("x"), "w", false), "root")

	n := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--root-mode", "1777", "--root-owner", "nobody:nogroup"}})
	usersCanReach(t, e, n)
	requireAttr(t, n.Mountpoint, dirWant(0o1777, 65534, 65534))
	assert.Equal(t, "granted", openAs(t, e, alice, "w", n.Path("x")), "alice at the top of a 1777 root")
	assert.Equal(t, "granted", openAs(t, e, bob, "w", n.Path("x")), "bob at the top of a 1777 root")
}

// --max-dirs-per-user bounds the lock directories one uid may make: past
// it mkdir fails with EDQUOT; other users and root are not affected, and
// removing one of its directories lets the user make another.
func TestTreeMaxDirsPerUser(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--max-dirs-per-user", "3"}})
	usersCanReach(t, e, d)
	mkdirOf := func(u treeUser, path string) (int, string) {
		code, _, errOut := runAs(t, u, "mkdir", path)
		return code, errOut
	}
	for _, p := range []string{"a1", "a2", "a1/b"} {
		code, errOut := mkdirOf(alice, d.Path(p))
		require.Equal(t, 0, code, "mkdir %s by alice: %s", p, errOut)
	}
	for _, p := range []string{"a3", "a2/c"} {
		code, errOut := mkdirOf(alice, d.Path(p))
		assert.NotEqual(t, 0, code, "mkdir %s by alice past her budget", p)
		assert.Contains(t, errOut, "Disk quota exceeded", "mkdir %s by alice past her budget", p)
	}
	for _, p := range []string{"b1", "b2", "b3"} {
		code, errOut := mkdirOf(bob, d.Path(p))
		assert.Equal(t, 0, code, "mkdir %s by bob: %s", p, errOut)
	}
	for i := range 5 {
		require.NoError(t, os.Mkdir(d.Path("r"+strconv.Itoa(i)), 0o755), "root has no budget")
	}
	// The directories made work as usual.
	assert.Equal(t, "granted", openAs(t, e, alice, "w", d.Path("a1/b/x")))
	harness.Eventually(t, patience, func() (bool, string) {
		code, _, errOut := runAs(t, alice, "rmdir", d.Path("a1/b"))
		return code == 0, "rmdir a1/b by alice once a1/b/x is released: " + errOut
	})
	code, errOut := mkdirOf(alice, d.Path("a3"))
	assert.Equal(t, 0, code, "mkdir by alice after she removed one: %s", errOut)
}

// In the root, writable by everybody and without a sticky bit, only root,
// a directory's owner or the root's owner may remove a top-level lock
// directory: otherwise any user could remove another's idle directory,
// make it again and own it. Below the top, the directory's own mode
// decides, as on any filesystem.
func TestTreeRootRmdirOwnerOnly(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--root-owner", carol.ids()}})
	usersCanReach(t, e, d)
	requireAttr(t, d.Mountpoint, dirWant(0o777, carol.uid, carol.gid))
	rmdirAs := func(u treeUser, p string) (int, string) {
		code, _, errOut := runAs(t, u, "rmdir", d.Path(p))
		return code, errOut
	}
	for _, p := range []string{"teamA", "teamA2", "teamA3", "teamA/open"} {
		code, _, errOut := runAs(t, alice, "mkdir", "-m", "0777", d.Path(p))
		require.Equal(t, 0, code, "mkdir %s by alice: %s", p, errOut)
	}

	code, errOut := rmdirAs(bob, "teamA3")
	assert.NotEqual(t, 0, code, "bob removes alice's top-level directory")
	assert.Contains(t, errOut, "Operation not permitted")
	d.WaitLog(patience, `msg="rmdir failed"`, "lock=teamA3", "errno=EPERM", "uid 65534 may not remove it")
	requireAttr(t, d.Path("teamA3"), dirWant(0o777, alice.uid, alice.gid))
	code, _, errOut = runAs(t, bob, "mkdir", d.Path("teamA3"))
	assert.NotEqual(t, 0, code, "bob makes alice's directory his")
	assert.Contains(t, errOut, "File exists")
	requireAttr(t, d.Path("teamA3"), dirWant(0o777, alice.uid, alice.gid))

	// Below the top, alice's 0777 directory lets anybody remove what is in
	// it, as on any filesystem.
	code, errOut = rmdirAs(bob, "teamA/open")
	assert.Equal(t, 0, code, "bob removes a directory in alice's 0777 directory: %s", errOut)

	// The owner, the root's owner and root may.
	code, errOut = rmdirAs(alice, "teamA")
	assert.Equal(t, 0, code, "alice removes her own: %s", errOut)
	d.WaitLog(patience, `msg="lock directory removed"`, "dir=teamA", fmt.Sprintf("by_uid=%d", alice.uid))
	code, errOut = rmdirAs(carol, "teamA2")
	assert.Equal(t, 0, code, "the root's owner removes alice's: %s", errOut)
	require.NoError(t, os.Remove(d.Path("teamA3")), "root removes alice's")

	// Once it is gone, the name is anybody's again.
	code, _, errOut = runAs(t, bob, "mkdir", d.Path("teamA3"))
	assert.Equal(t, 0, code, "bob makes a free name: %s", errOut)
	requireAttr(t, d.Path("teamA3"), dirWant(0o755, bob.uid, bob.gid))
}
