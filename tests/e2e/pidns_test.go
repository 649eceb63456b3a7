package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// docs/usage.md ("Who holds what", the PID item): the PID that
// user.lockfs.holders, lockfs status and the holder's record show is the pid
// as the kernel reports it to the daemon, i.e. in the daemon's pid
// namespace, and 0 for a holder not visible from there. A daemon in a new pid namespace sees the test's
// holders as pid 0 (and still excludes them); a holder inside the daemon's
// namespace shows its pid there, not the test's; a daemon in the test's
// namespace shows the test's pid.
func TestHolderPidAcrossPidNamespaces(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{PidNamespace: true})
	ids := nsPids(t, d.Pid())
	require.Len(t, ids, 2, "the daemon is in a pid namespace below the test's: NSpid %v", ids)
	require.Equal(t, "1", ids[1], "the daemon is pid 1 of its namespace")

	// A holder in the test's namespace: pid 0 everywhere.
	x := d.Path("x")
	h := e.Hold(t, x, "w")
	t.Logf("holder host pid %d; holders %q", h.Pid(), lockXattr(t, x, "user.lockfs.holders"))
	assert.Equal(t, []string{"0", "0", "0", "exclusive"}, holderLine(t, x)[:4],
		"user.lockfs.holders: uid gid pid mode of a holder the daemon cannot see (host pid %d)", h.Pid())
	assert.Equal(t, "0", statusRow(t, e, d.Mountpoint, "x")[7], "lockfs status PID column")
	assert.Equal(t, []uint32{0}, statusPids(t, e, d.Mountpoint, "x"), "lockfs status --json pid")

	// The holder reads its own record: pid=0 as well.
	script := `exec 9<>"$1" || exit 1; read -r tok <&9; read -r rec <&9; echo "rec $tok $$ $rec"; read _`
	rp := harness.Start(t, harness.ProcOptions{Name: "bash record", Path: e.BashPath, Args: []string{"-c", script, "bash", d.Path("rec")}})
	f := rp.WaitLine("rec", patience)
	require.GreaterOrEqual(t, len(f), 3, "record line %q", f)
	assert.Contains(t, f[2:], "pid=0", "record of bash pid %s (host namespace)", f[1])
	assert.Contains(t, f[2:], "token="+f[0])

	// Exclusion does not depend on the pid: a second opener waits until
	// the pid-0 holder closes, and is then pid 0 too.
	w := e.Waiter(t, x, "w")
	requireBlocked(t, w)
	assert.Equal(t, "1", lockXattr(t, x, "user.lockfs.waiters"))
	requireBlocked(t, w)
	harness.Release(t, h)
	harness.Granted(t, w, patience)
	assert.Equal(t, "0", holderLine(t, x)[2], "pid of the next holder, also invisible")
	harness.Release(t, w)

	// A holder inside the daemon's namespace (nsenter forks it there):
	// the pid it has there, not the one the test sees.
	in := harness.Start(t, harness.ProcOptions{Name: "lockclient in daemon's pid namespace", Path: nsenterPath(t),
		Args: []string{"--target", strconv.Itoa(d.Pid()), "--pid", "--", e.Client, "-mode", "w", d.Path("y")}})
	start := in.WaitLine("start", patience)
	harness.Granted(t, in, patience)
	nsPid := start[0] // getpid() in the daemon's namespace
	hostPid := onlyChild(t, in.Pid())
	require.Equal(t, []string{strconv.Itoa(hostPid), nsPid}, nsPids(t, hostPid),
		"the client (child of nsenter pid %d) runs in a pid namespace below the test's", in.Pid())
	t.Logf("client in the daemon's namespace: host pid %d, pid %s there; holders %q", hostPid, nsPid,
		lockXattr(t, d.Path("y"), "user.lockfs.holders"))
	assert.Equal(t, []string{"0", "0", nsPid, "exclusive"}, holderLine(t, d.Path("y"))[:4],
		"user.lockfs.holders: the pid in the daemon's namespace (host pid %d)", hostPid)
	assert.Equal(t, nsPid, statusRow(t, e, d.Mountpoint, "y")[7], "lockfs status PID column")
	ns, err := strconv.ParseUint(nsPid, 10, 32)
	require.NoError(t, err)
	assert.Equal(t, []uint32{uint32(ns)}, statusPids(t, e, d.Mountpoint, "y"), "lockfs status --json pid")
	harness.Release(t, in)

	// A daemon in the test's namespace shows the test's pid of the holder.
	d2 := e.StartDaemon(t, harness.DaemonConfig{})
	h2 := e.Hold(t, d2.Path("x"), "w")
	pid2 := strconv.Itoa(h2.Pid())
	assert.Equal(t, []string{"0", "0", pid2, "exclusive"}, holderLine(t, d2.Path("x"))[:4],
		"user.lockfs.holders from a daemon in the holder's namespace")
	assert.Equal(t, pid2, statusRow(t, e, d2.Mountpoint, "x")[7], "lockfs status PID column")
	assert.Equal(t, []uint32{uint32(h2.Pid())}, statusPids(t, e, d2.Mountpoint, "x"), "lockfs status --json pid")
	harness.Release(t, h2)
}

// nsPids returns the NSpid field of /proc/PID/status: pid's process id in
// the test's pid namespace, then in each namespace below, down to its own.
func nsPids(t *testing.T, pid int) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("/proc/%d/status has no NSpid line", pid)
	return nil
}

// onlyChild returns the one child process of pid.
func onlyChild(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	require.NoError(t, err)
	kids := strings.Fields(string(data))
	require.Len(t, kids, 1, "children of pid %d", pid)
	child, err := strconv.Atoi(kids[0])
	require.NoError(t, err)
	return child
}

// nsenterPath finds nsenter (util-linux, essential on Debian).
func nsenterPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("nsenter")
	require.NoError(t, err, "nsenter (util-linux) is needed to start a client in the daemon's pid namespace")
	return p
}

// holderLine returns the fields of the one line of path's
// user.lockfs.holders: UID GID PID MODE TOKEN GRANTED VIA.
func holderLine(t *testing.T, path string) []string {
	t.Helper()
	v := lockXattr(t, path, "user.lockfs.holders")
	lines := strings.Split(strings.TrimSuffix(v, "\n"), "\n")
	require.Len(t, lines, 1, "user.lockfs.holders of %s: %q", path, v)
	f := strings.Fields(lines[0])
	require.Len(t, f, 7, "holder line %q", lines[0])
	return f
}

// statusRow runs `lockfs status MOUNT` and returns the fields of name's
// row: NAME STATE MODE TOKEN WAITERS UID GID PID VIA SINCE.
func statusRow(t *testing.T, e *harness.Env, mount, name string) []string {
	t.Helper()
	p := lockfsCmd(t, e, "status", mount)
	require.Equal(t, 0, p.Wait(patience), "lockfs status: %s", p.Stderr())
	for _, line := range p.Lines()[1:] {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			require.Len(t, f, 10, "status row %q", line)
			return f
		}
	}
	t.Fatalf("lockfs status %s has no row %s:\n%s", mount, name, p.Stdout())
	return nil
}

// statusPids runs `lockfs status --json MOUNT` and returns the pids of
// name's holders.
func statusPids(t *testing.T, e *harness.Env, mount, name string) []uint32 {
	t.Helper()
	p := lockfsCmd(t, e, "status", "--json", mount)
	require.Equal(t, 0, p.Wait(patience), "lockfs status --json: %s", p.Stderr())
	var rep struct {
		Locks []struct {
			Name    string `json:"name"`
			Holders []struct {
				PID uint32 `json:"pid"`
			} `json:"holders"`
		} `json:"locks"`
	}
	require.NoError(t, json.Unmarshal([]byte(p.Stdout()), &rep), "json: %s", p.Stdout())
	for _, l := range rep.Locks {
		if l.Name == name {
			var pids []uint32
			for _, h := range l.Holders {
				pids = append(pids, h.PID)
			}
			return pids
		}
	}
	t.Fatalf("lockfs status --json %s has no lock %s: %s", mount, name, p.Stdout())
	return nil
}
