package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// The legacy tools, unmodified, on lockfs mounts. Each opens the lock file
// and then calls flock(2) or fcntl(2); the mount forwards those calls to
// the daemon, so they take the same lock as opens do, across daemons:
//
//   - flock(1) (util-linux): open O_RDONLY|O_CREAT|O_NOCTTY, flock(2).
//   - setlock (daemontools), chpst -l/-L (runit): open
//     O_WRONLY|O_NONBLOCK|O_APPEND|O_CREAT, flock(2).
//   - Python fcntl.flock (on an O_RDONLY descriptor), fcntl.lockf (fcntl
//     F_SETLKW; it needs a descriptor open for writing).
//   - Python filelock (Debian's python3-filelock): open
//     O_RDWR|O_CREAT|O_TRUNC|O_NOFOLLOW, then flock(LOCK_EX|LOCK_NB),
//     polling.
//   - Perl: open "<", flock(LOCK_EX).

// needTool returns the path of the program bin (Debian package pkg). When
// it is missing the test fails if LOCKFS_E2E_REQUIRED is set, and is
// skipped otherwise.
func needTool(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err == nil {
		return p
	}
	missing(t, fmt.Sprintf("%s not found (apt-get install %s)", bin, pkg))
	return ""
}

// needPython returns the python3 interpreter, checking that it can import
// modules (filelock: Debian's python3-filelock).
func needPython(t *testing.T, e *harness.Env, modules ...string) string {
	t.Helper()
	if e.Python == "" {
		missing(t, "python3 not found (apt-get install python3)")
	}
	for _, m := range modules {
		if out, err := exec.Command(e.Python, "-c", "import "+m).CombinedOutput(); err != nil {
			missing(t, fmt.Sprintf("%s cannot import %s (apt-get install python3-%s): %v %s", e.Python, m, m, err, out))
		}
	}
	return e.Python
}

// missing fails t when LOCKFS_E2E_REQUIRED is set and skips it otherwise.
func missing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(harness.RequiredEnv) != "" {
		t.Fatalf("%s, and %s is set", why, harness.RequiredEnv)
	}
	t.Skip(why + " (set " + harness.RequiredEnv + "=1 to make this a failure)")
}

// counterSection is the critical section of every counter worker: read,
// a tiny sleep, write back one more.
const counterSection = `read n <"$C"; sleep 0.002; echo $((n + 1)) >"$C"`

// toolLoop runs "$@" sh -c "$SECTION" $N times; "$@" is the locking tool
// with its lock path (flock P, setlock P, chpst -l P).
const toolLoop = `i=0
while [ "$i" -lt "$N" ]; do
	"$@" sh -c "$SECTION" || exit 1
	i=$((i + 1))
done
echo done`

// pyCounter increments the counter C N times under the lock KIND
// (flock, lockf or filelock) of P. Every other round unlocks explicitly
// before the close; the others let the close release.
const pyCounter = `import fcntl, os, sys, time
kind, p, c, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def section():
    with open(c) as f:
        v = int(f.read())
    time.sleep(0.002)
    with open(c, "w") as f:
        f.write("%d\n" % (v + 1))
for i in range(n):
    if kind == "filelock":
        import filelock
        with filelock.FileLock(p):
            section()
        continue
    if kind == "flock":
        fd = os.open(p, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        fcntl.lockf(fd, fcntl.LOCK_EX)
    section()
    if i % 2:
        (fcntl.flock if kind == "flock" else fcntl.lockf)(fd, fcntl.LOCK_UN)
    os.close(fd)
print("done")
`

// perlCounter is pyCounter's flock for Perl: open "<", flock(LOCK_EX).
const perlCounter = `use strict; use Fcntl qw(:flock); use Time::HiRes qw(usleep);
my ($p, $c, $n) = @ARGV;
for my $i (1 .. $n) {
	open(my $fh, "<", $p) or die "open $p: $!";
	flock($fh, LOCK_EX) or die "flock $p: $!";
	open(my $r, "<", $c) or die "open $c: $!"; my $v = <$r>; close $r;
	usleep(2000);
	open(my $w, ">", $c) or die "open $c: $!"; print $w ($v + 1), "\n"; close $w;
	flock($fh, LOCK_UN) if $i % 2;
	close $fh;
}
print "done\n";
`

// lockTool is one legacy tool as a counter worker.
type lockTool struct {
	name string
	// need checks that the tool is installed (see needTool).
	need func(t *testing.T, e *harness.Env)
	// worker starts a process that increments counter n times under the
	// tool's lock of name c on mount m; i numbers the workers (some tools
	// alternate between M/c and M/.flock/c with it).
	worker func(t *testing.T, e *harness.Env, m string, i int, counter string, n int) *harness.Proc
}

func shellTool(name, pkg string, argv ...string) lockTool {
	return lockTool{
		name: name,
		need: func(t *testing.T, e *harness.Env) { needTool(t, argv[0], pkg) },
		worker: func(t *testing.T, e *harness.Env, m string, i int, counter string, n int) *harness.Proc {
			args := append([]string{"-c", toolLoop, "bash"}, argv...)
			args = append(args, filepath.Join(m, "c"))
			return harness.Start(t, harness.ProcOptions{Name: name + " worker", Path: e.BashPath, Args: args,
				Env: []string{"C=" + counter, "N=" + strconv.Itoa(n), "SECTION=" + counterSection}})
		},
	}
}

func pyTool(kind string, modules ...string) lockTool {
	return lockTool{
		name: "python " + kind,
		need: func(t *testing.T, e *harness.Env) { needPython(t, e, modules...) },
		worker: func(t *testing.T, e *harness.Env, m string, i int, counter string, n int) *harness.Proc {
			path := filepath.Join(m, "c")
			if j := i; kind != "flock" {
				if kind == "lockf" {
					j++
				}
				// lockf and filelock open for writing: a blocking open of
				// M/c takes the lock itself (the lock call then finds it
				// held by its own descriptor), one of M/.flock/c takes
				// nothing and the lock call decides. Workers take turns,
				// so that each daemon serves both (workers alternate
				// between the daemons), and the one lockf and filelock
				// worker of the mixed torture use M/.flock/c.
				if j%4 == 1 || j%4 == 2 {
					path = filepath.Join(m, ".flock", "c")
				}
			}
			return harness.Start(t, harness.ProcOptions{Name: "python " + kind + " worker", Path: e.Python,
				Args: []string{"-u", "-c", pyCounter, kind, path, counter, strconv.Itoa(n)}})
		},
	}
}

var perlTool = lockTool{
	name: "perl flock",
	need: func(t *testing.T, e *harness.Env) { needTool(t, "perl", "perl") },
	worker: func(t *testing.T, e *harness.Env, m string, i int, counter string, n int) *harness.Proc {
		return harness.Start(t, harness.ProcOptions{Name: "perl worker", Path: "perl",
			Args: []string{"-e", perlCounter, filepath.Join(m, "c"), counter, strconv.Itoa(n)}})
	},
}

// legacyTools are the tools of the counter tortures.
func legacyTools() []lockTool {
	return []lockTool{
		shellTool("flock", "util-linux", "flock"),
		shellTool("setlock", "daemontools", "setlock"),
		shellTool("chpst", "runit", "chpst", "-l"),
		pyTool("flock"),
		pyTool("lockf"),
		pyTool("filelock", "filelock"),
		perlTool,
	}
}

// runCounter starts one worker per entry of tools (worker i on mount
// mounts[i%len(mounts)]), each incrementing a fresh counter n times, and
// requires the counter to end exactly at len(tools)*n.
func runCounter(t *testing.T, e *harness.Env, mounts []string, tools []lockTool, n int) {
	t.Helper()
	counter := filepath.Join(t.TempDir(), "counter")
	require.NoError(t, os.WriteFile(counter, []byte("0\n"), 0o644))
	start := time.Now()
	var ps []*harness.Proc
	for i, tool := range tools {
		ps = append(ps, tool.worker(t, e, mounts[i%len(mounts)], i, counter, n))
	}
	for _, p := range ps {
		p.WaitLine("done", 3*time.Minute)
		require.Equal(t, 0, p.Wait(patience), "%s: %s", p.Name, p.Stderr())
	}
	got, err := os.ReadFile(counter)
	require.NoError(t, err)
	t.Logf("%d workers x %d increments in %v", len(tools), n, time.Since(start))
	assert.Equal(t, strconv.Itoa(len(tools)*n), strings.TrimSpace(string(got)), "counter")
}

// Counter torture for each legacy tool: 4 workers x 50 increments, two
// through each of two daemons on one state directory, end exact.
func TestLegacyCounterTwoDaemons(t *testing.T) {
	e := setup(t)
	const workers, increments = 4, 50
	for _, tool := range legacyTools() {
		t.Run(strings.ReplaceAll(tool.name, " ", "_"), func(t *testing.T) {
			tool.need(t, e)
			t.Parallel()
			a, b := daemonPair(t, e, harness.DaemonConfig{LogLevel: "info"})
			tools := make([]lockTool, workers)
			for i := range tools {
				tools[i] = tool
			}
			runCounter(t, e, []string{a.Mountpoint, b.Mountpoint}, tools, increments)
		})
	}
}

// Counter torture across two daemons on one etcd, with every legacy tool
// on the one name at once (one worker each, alternating daemons): the
// tools exclude each other, and the counter ends exact.
func TestLegacyCounterEtcdMixed(t *testing.T) {
	e := setup(t)
	const increments = 30
	tools := legacyTools()
	for _, tool := range tools {
		tool.need(t, e)
	}
	s := startEtcd(t, e)
	c := etcdDaemonConfig(s, "/lockfs-e2e/legacy-torture/", 0)
	c.LogLevel = "info"
	a, b := e.StartDaemon(t, c), e.StartDaemon(t, c)
	runCounter(t, e, []string{a.Mountpoint, b.Mountpoint}, tools, increments)
}

// pyHold takes the lock KIND (flock, lockf, filelock) of P; with a third
// argument: flock and lockf try once (LOCK_NB), filelock waits at most
// that many seconds. It prints "held PID", or "busy ERRNO" / "timeout" and
// exits 1, then keeps the lock until a line on stdin or its end.
const pyHold = `import errno, fcntl, os, sys
kind, p = sys.argv[1], sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else None
if kind == "filelock":
    import filelock
    lk = filelock.FileLock(p, timeout=float(arg) if arg else -1)
    try:
        lk.acquire()
    except filelock.Timeout:
        print("timeout")
        sys.exit(1)
else:
    if kind == "flock":
        fd, call = os.open(p, os.O_RDONLY), fcntl.flock
    else:
        fd, call = os.open(p, os.O_WRONLY | os.O_APPEND), fcntl.lockf
    try:
        call(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if arg else 0))
    except OSError as e:
        print("busy", errno.errorcode.get(e.errno, e.errno))
        sys.exit(1)
print("held", os.getpid())
sys.stdin.readline()
`

// pyLock starts pyHold with kind, path and the optional argument.
func pyLock(t *testing.T, e *harness.Env, kind, path string, arg ...string) *harness.Proc {
	t.Helper()
	py := needPython(t, e, "filelock")
	return harness.Start(t, harness.ProcOptions{Name: "python " + kind + " " + path, Path: py,
		Args: append([]string{"-u", "-c", pyHold, kind, path}, arg...)})
}

// toolRun runs a tool to its end and returns its exit code.
func toolRun(t *testing.T, bin string, args ...string) int {
	t.Helper()
	p := harness.Start(t, harness.ProcOptions{Name: bin + " " + strings.Join(args, " "), Path: bin, Args: args})
	return p.Wait(patience)
}

// flockHold starts flock(1) holding path (exclusive, or with flags such
// as -s) around a shell that prints "held" and waits for a line on stdin.
func flockHold(t *testing.T, path string, flags ...string) *harness.Proc {
	t.Helper()
	args := append(flags, path, "sh", "-c", "echo held; read _ || true")
	return harness.Start(t, harness.ProcOptions{Name: "flock " + path, Path: needTool(t, "flock", "util-linux"), Args: args})
}

// waitWaiters polls until the user.lockfs.waiters of path (as its daemon
// sees it) is n.
func waitWaiters(t *testing.T, path string, n int) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got := lockXattr(t, path, "user.lockfs.waiters")
		return got == strconv.Itoa(n), fmt.Sprintf("user.lockfs.waiters of %s is %s, want %d", path, got, n)
	})
}

// setlock and chpst -l wait while exec 9>M/x holds the name (through the
// other daemon too), then run their command once it is released.
func TestLegacyWaitUnderContention(t *testing.T) {
	e := setup(t)
	setlock := needTool(t, "setlock", "daemontools")
	chpst := needTool(t, "chpst", "runit")
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	for _, c := range []struct {
		name string
		argv []string
		d    *harness.Daemon
	}{
		{"setlock", []string{setlock}, a},
		{"chpst -l", []string{chpst, "-l"}, a},
		{"setlock via B", []string{setlock}, b},
		{"chpst -l via B", []string{chpst, "-l"}, b},
	} {
		h := shellHold(t, e, a.Path("x"), ">")
		args := append(c.argv[1:], c.d.Path("x"), "sh", "-c", "echo ran")
		p := harness.Start(t, harness.ProcOptions{Name: c.name, Path: c.argv[0], Args: args})
		waitWaiters(t, c.d.Path("x"), 1)
		time.Sleep(300 * time.Millisecond)
		require.False(t, p.HasLine("ran"), "%s ran while exec 9> held the name", c.name)
		require.False(t, p.Exited(), "%s gave up instead of waiting: %s", c.name, p.Stderr())
		shellRelease(t, h)
		p.WaitLine("ran", patience)
		require.Equal(t, 0, p.Wait(patience), "%s: %s", c.name, p.Stderr())
		waitFree(t, e, a.Path("x"))
	}
}

// The try and timeout flags return their documented exit codes while
// exec 9>M/x holds the name, and succeed once it is free.
func TestLegacyTryAndTimeoutCodes(t *testing.T) {
	e := setup(t)
	flock := needTool(t, "flock", "util-linux")
	setlock := needTool(t, "setlock", "daemontools")
	chpst := needTool(t, "chpst", "runit")
	needPython(t, e, "filelock")
	d := e.StartDaemon(t, harness.DaemonConfig{})
	x := d.Path("x")
	h := shellHold(t, e, x, ">")

	assert.Equal(t, 1, toolRun(t, flock, "-n", x, "true"), "flock -n")
	assert.Equal(t, 7, toolRun(t, flock, "-E", "7", "-n", x, "true"), "flock -E 7 -n")
	start := time.Now()
	assert.Equal(t, 1, toolRun(t, flock, "-w", "0.5", x, "true"), "flock -w 0.5")
	t.Logf("flock -w 0.5 returned after %v", time.Since(start))
	assert.Equal(t, 111, toolRun(t, setlock, "-n", x, "true"), "setlock -n")
	// chpst(8): 100 is for wrong options; a lock it cannot take is
	// "trouble changing the process state", 111.
	assert.Equal(t, 111, toolRun(t, chpst, "-L", x, "true"), "chpst -L")
	// filelock opens with O_RDWR and no O_NONBLOCK: on M/x that open
	// would wait for the lock itself, and its timeout could not end the
	// wait. On M/.flock/x the open takes nothing and filelock's own
	// flock(LOCK_NB) polling, and so its timeout, decide.
	p := pyLock(t, e, "filelock", flockPath(x), "0.3")
	p.WaitLine("timeout", patience)
	assert.Equal(t, 1, p.Wait(patience))
	assert.Equal(t, "0", lockXattr(t, x, "user.lockfs.waiters"), "nothing left queued")

	shellRelease(t, h)
	waitFree(t, e, x)
	// Each tool's lock goes at the RELEASE that follows its exit by a
	// little: wait for it before the next tool tries.
	assert.Equal(t, 0, toolRun(t, flock, "-n", x, "true"), "flock -n, free")
	waitHolders(t, x, 0)
	assert.Equal(t, 0, toolRun(t, flock, "-w", "0.5", x, "true"), "flock -w 0.5, free")
	waitHolders(t, x, 0)
	assert.Equal(t, 0, toolRun(t, setlock, "-n", x, "true"), "setlock -n, free")
	waitHolders(t, x, 0)
	assert.Equal(t, 0, toolRun(t, chpst, "-L", x, "true"), "chpst -L, free")
	waitHolders(t, x, 0)
	p = pyLock(t, e, "filelock", flockPath(x), "0.3")
	p.WaitLine("held", patience)
	p.CloseStdin()
	assert.Equal(t, 0, p.Wait(patience))
}

// A waiter killed with SIGKILL, or ended by timeout(1) or flock -w,
// leaves nothing queued: the waiters count goes back to 0 on its daemon,
// and the next locker, on either daemon, gets the name as soon as the
// holder releases it.
func TestLegacyAbandonedWaitLeavesNothing(t *testing.T) {
	e := setup(t)
	flock := needTool(t, "flock", "util-linux")
	timeout := needTool(t, "timeout", "coreutils")
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	h := shellHold(t, e, a.Path("k"), ">")

	for _, d := range []*harness.Daemon{a, b} {
		k := d.Path("k")
		w := harness.Start(t, harness.ProcOptions{Name: "flock waiter", Path: flock, Args: []string{k, "true"}})
		waitWaiters(t, k, 1)
		w.Signal(unix.SIGKILL)
		assert.Equal(t, -1, w.Wait(patience), "killed flock")
		waitWaiters(t, k, 0)

		assert.Equal(t, 124, toolRun(t, timeout, "0.3", flock, k, "true"), "timeout 0.3 flock")
		waitWaiters(t, k, 0)
		assert.Equal(t, 1, toolRun(t, flock, "-w", "0.3", k, "true"), "flock -w 0.3")
		waitWaiters(t, k, 0)
	}
	requireHeld(t, e, a.Path("k"))

	// Nothing stale is queued ahead: a new waiter on each daemon is granted
	// right after the release.
	next := flockHold(t, b.Path("k"))
	waitWaiters(t, b.Path("k"), 1)
	shellRelease(t, h)
	next.WaitLine("held", patience)
	next2 := flockHold(t, a.Path("k"))
	waitWaiters(t, a.Path("k"), 1)
	next.CloseStdin()
	next2.WaitLine("held", patience)
	next2.CloseStdin()
	require.Equal(t, 0, next2.Wait(patience))
	waitFree(t, e, b.Path("k"))
}

// exec 9>M/x, flock(1) and Python's lockf exclude each other on one name,
// across two daemons on one state directory.
func TestLegacyMixedInterfacesExclude(t *testing.T) {
	e := setup(t)
	flock := needTool(t, "flock", "util-linux")
	needPython(t, e, "filelock")
	a, b := daemonPair(t, e, harness.DaemonConfig{})

	// exec 9> on A: flock and lockf on B fail.
	h := shellHold(t, e, a.Path("x"), ">")
	assert.Equal(t, 1, toolRun(t, flock, "-n", b.Path("x"), "true"), "flock -n on B while exec 9> holds on A")
	p := pyLock(t, e, "lockf", flockPath(b.Path("x")), "nb")
	p.WaitLine("busy", patience)
	p.Wait(patience)
	// A lockf waiter on B gets it once the exec 9> holder closes.
	lw := pyLock(t, e, "lockf", flockPath(b.Path("x")))
	waitWaiters(t, b.Path("x"), 1)
	shellRelease(t, h)
	lw.WaitLine("held", patience)

	// lockf on B: flock on A fails, exec 9> on A waits.
	assert.Equal(t, 1, toolRun(t, flock, "-n", a.Path("x"), "true"), "flock -n on A while lockf holds on B")
	ew := shellWaiter(t, e, a.Path("x"), ">")
	ew.WaitBlockedInOpen(patience)
	lw.CloseStdin()
	ew.WaitLine("granted", patience)

	// exec 9> on A again; a flock waiter on B, then lockf on A fails.
	fw := flockHold(t, b.Path("x"))
	waitWaiters(t, b.Path("x"), 1)
	shellRelease(t, ew)
	fw.WaitLine("held", patience)
	p = pyLock(t, e, "lockf", flockPath(a.Path("x")), "nb")
	p.WaitLine("busy", patience)
	p.Wait(patience)
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "w"), "exec 9>M/.try/x on A while flock holds on B")
	fw.CloseStdin()
	require.Equal(t, 0, fw.Wait(patience))
	waitFree(t, e, a.Path("x"))
}

// A flock taken through one daemon excludes flock -n through the other;
// the other daemon's xattrs show only its own holders, so this test only
// logs what it reports.
func TestLegacyFlockSeenAcrossDaemons(t *testing.T) {
	e := setup(t)
	flock := needTool(t, "flock", "util-linux")
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	h := flockHold(t, a.Path("f"))
	h.WaitLine("held", patience)
	assert.Equal(t, 1, toolRun(t, flock, "-n", b.Path("f"), "true"), "flock -n through B")
	assert.Equal(t, 1, toolRun(t, flock, "-s", "-n", b.Path("f"), "true"), "flock -s -n through B")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("f"), "r"), "shared try through B")
	for _, attr := range []string{"state", "holders", "waiters"} {
		t.Logf("B's user.lockfs.%s while A's flock holds: %q", attr, lockXattr(t, b.Path("f"), "user.lockfs."+attr))
	}
	h.CloseStdin()
	require.Equal(t, 0, h.Wait(patience))
	harness.Eventually(t, patience, func() (bool, string) {
		rc := toolRun(t, flock, "-n", b.Path("f"), "true")
		return rc == 0, fmt.Sprintf("flock -n through B after A's release: %d", rc)
	})
}

// Who took a lock shows: VIA flock for flock(1), posix for Python's
// lockf, open for exec 9>, in user.lockfs.holders and lockfs status (the
// table and --json).
func TestLegacyHoldersShowVia(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	needPython(t, e, "filelock")

	fh := flockHold(t, d.Path("v1"))
	fh.WaitLine("held", patience)
	lh := pyLock(t, e, "lockf", flockPath(d.Path("v2")))
	lpid := lh.WaitLine("held", patience)[0]
	oh := shellHold(t, e, d.Path("v3"), ">")

	want := map[string][2]string{ // name: via, pid
		"v1": {"flock", strconv.Itoa(fh.Pid())},
		"v2": {"posix", lpid},
		"v3": {"open", strconv.Itoa(oh.Pid())},
	}
	for name, w := range want {
		f := holderLine(t, d.Path(name))
		assert.Equal(t, w[0], f[6], "VIA of %s in user.lockfs.holders %q", name, f)
		assert.Equal(t, w[1], f[2], "PID of %s in user.lockfs.holders %q", name, f)
		row := statusRow(t, e, d.Mountpoint, name)
		assert.Equal(t, w[0], row[8], "VIA column of %s in lockfs status %q", name, row)
	}
	p := lockfsCmd(t, e, "status", "--json", d.Mountpoint)
	require.Equal(t, 0, p.Wait(patience), "lockfs status --json: %s", p.Stderr())
	var rep struct {
		Locks []struct {
			Name    string `json:"name"`
			Holders []struct {
				Via string `json:"via"`
			} `json:"holders"`
		} `json:"locks"`
	}
	require.NoError(t, json.Unmarshal([]byte(p.Stdout()), &rep), "json: %s", p.Stdout())
	got := map[string]string{}
	for _, l := range rep.Locks {
		require.Len(t, l.Holders, 1, "holders of %s", l.Name)
		got[l.Name] = l.Holders[0].Via
	}
	assert.Equal(t, map[string]string{"v1": "flock", "v2": "posix", "v3": "open"}, got, "via in lockfs status --json")
	fh.CloseStdin()
	lh.CloseStdin()
	shellRelease(t, oh)
}

// Shared locks from a shell: exec 9<M/.shared/x holds shared, and so does
// exec 9<M/x; flock -s 9. Readers share, a writer waits for both, and a
// reader waits for the writer.
func TestLegacySharedFromShell(t *testing.T) {
	e := setup(t)
	needTool(t, "flock", "util-linux")
	d := e.StartDaemon(t, harness.DaemonConfig{})
	x := d.Path("x")
	flockS := func() *harness.Proc {
		return e.Bash(t, `exec 9<"$P" || exit 1; flock -s 9 || exit 2; echo granted; read _; exec 9>&-; echo closed`, "P="+x)
	}

	r1 := shellHold(t, e, sharedPath(x), "<")
	r2 := flockS()
	r2.WaitLine("granted", patience)
	r3 := shellHold(t, e, sharedPath(x), "<")
	assert.Equal(t, "granted", probe(t, e, x, "r"), "a shared try next to three readers")
	assert.Equal(t, "EAGAIN", probe(t, e, x, "w"), "an exclusive try next to readers")
	assert.Equal(t, "shared", lockXattr(t, x, "user.lockfs.mode"))

	w := shellWaiter(t, e, x, ">")
	w.WaitBlockedInOpen(patience)
	shellRelease(t, r1)
	shellRelease(t, r3)
	stayBlocked(t, w, 300*time.Millisecond) // the flock -s reader still holds
	shellRelease(t, r2)
	w.WaitLine("granted", patience)

	// Readers of both kinds wait for the writer.
	r4 := flockS()
	r5 := shellWaiter(t, e, sharedPath(x), "<")
	waitWaiters(t, x, 2)
	require.False(t, r4.HasLine("granted"), "flock -s granted while exec 9> holds")
	require.False(t, r5.HasLine("granted"), "exec 9<.shared granted while exec 9> holds")
	shellRelease(t, w)
	r4.WaitLine("granted", patience)
	r5.WaitLine("granted", patience)
	shellRelease(t, r4)
	shellRelease(t, r5)
}

// The script idiom exec 9>M/.flock/x; flock -n 9: one instance runs, a
// second (on either daemon) skips, and one after the first ended runs.
func TestLegacyFlockScriptIdiom(t *testing.T) {
	e := setup(t)
	needTool(t, "flock", "util-linux")
	a, b := daemonPair(t, e, harness.DaemonConfig{})
	const script = `exec 9>"$M/.flock/job" || exit 1
flock -n 9 || { echo skipped; exit 0; }
echo running; read _; echo finished`
	first := e.Bash(t, script, "M="+a.Mountpoint)
	first.WaitLine("running", patience)
	for _, d := range []*harness.Daemon{a, b} {
		second := e.Bash(t, script, "M="+d.Mountpoint)
		second.WaitLine("skipped", patience)
		require.Equal(t, 0, second.Wait(patience))
	}
	first.CloseStdin()
	first.WaitLine("finished", patience)
	require.Equal(t, 0, first.Wait(patience))
	harness.Eventually(t, patience, func() (bool, string) {
		third := e.Bash(t, script, "M="+b.Mountpoint)
		third.CloseStdin()
		require.Equal(t, 0, third.Wait(patience))
		return third.HasLine("finished"), "third instance after the first ended: " + third.Stdout()
	})
}
