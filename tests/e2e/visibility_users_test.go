package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// otherID is a second unprivileged uid/gid, next to nobodyID.
const otherID = "65533"

// asUser starts argv as uid/gid id (through setpriv).
func asUser(t *testing.T, id, name string, argv ...string) *harness.Proc {
	t.Helper()
	args := append([]string{"--reuid", id, "--regid", id, "--clear-groups", "--"}, argv...)
	return harness.Start(t, harness.ProcOptions{Name: name, Path: setprivPath(t), Args: args})
}

// userHolder starts a bash as uid id (root when id is "") that opens path
// read-write on fd 9 (which takes the lock, also through the root) and prints "granted"; it keeps the lock until a line on stdin,
// then prints "closed".
func userHolder(t *testing.T, e *harness.Env, id, path string) *harness.Proc {
	t.Helper()
	script := `exec 9<>"$1" || exit 1; echo granted; read _; exec 9>&-; echo closed`
	var p *harness.Proc
	if id == "" {
		p = harness.Start(t, harness.ProcOptions{Name: "bash holder", Path: e.BashPath, Args: []string{"-c", script, "bash", path}})
	} else {
		p = asUser(t, id, "bash holder "+id, e.BashPath, "-c", script, "bash", path)
	}
	p.WaitLine("granted", patience)
	return p
}

// rmAs runs rm as uid id and returns its exit status and stderr.
func rmAs(t *testing.T, id, path string) (int, string) {
	t.Helper()
	p := asUser(t, id, "rm as "+id, "rm", "-f", path)
	return p.Wait(patience), p.Stderr()
}

// currentHolders counts the lines of user.lockfs.holders that are not lost.
func currentHolders(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for line := range strings.SplitSeq(lockXattr(t, path, "user.lockfs.holders"), "\n") {
		if line != "" && !strings.HasSuffix(line, " lost") {
			n++
		}
	}
	return n
}

// waitHolders polls until path has n current holders. close(2) returns
// before the kernel's asynchronous RELEASE has reached the daemon, so a
// lease may be listed for a moment after its holder closed it.
func waitHolders(t *testing.T, path string, n int) {
	t.Helper()
	harness.Eventually(t, patience, func() (bool, string) {
		got := currentHolders(t, path)
		return got == n, fmt.Sprintf("%s has %d current holders, want %d", path, got, n)
	})
}

// A co-holder of a shared lock cannot break it: not root's lock (also after
// stat of the mount root and the lock file, so the kernel's cached owner
// cannot matter), and not another user's. A lone holder can break its own.
func TestBreakByCoHolderRefused(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--lock-delay", "100ms"}})
	traversableTo(t, e, d.Mountpoint)
	x := d.Path("shr")

	root := userHolder(t, e, "", sharedPath(x))
	co := userHolder(t, e, nobodyID, sharedPath(x))
	require.Equal(t, 2, currentHolders(t, x))

	st, errOut := rmAs(t, nobodyID, x)
	assert.NotEqual(t, 0, st, "rm of root's shared lock by a co-holder")
	assert.Contains(t, errOut, "Operation not permitted")
	d.WaitLog(patience, `msg="lock break refused"`, "lock=shr", "uid=65534", "reason=")

	// stat of the root and of the lock file, as nobody: whatever owner
	// and mode the kernel caches, the daemon decides.
	for _, p := range []string{d.Mountpoint, x} {
		s := asUser(t, nobodyID, "stat", "stat", "-c", "%a %u", p)
		require.Equal(t, 0, s.Wait(patience), s.Stderr())
		if p == d.Mountpoint {
			assert.Equal(t, "777 0", strings.TrimSpace(s.Stdout()), "the root has no sticky bit")
		} else {
			assert.Equal(t, "666 0", strings.TrimSpace(s.Stdout()), "owner: the first holder (root)")
		}
	}
	st, errOut = rmAs(t, nobodyID, x)
	assert.NotEqual(t, 0, st, "rm after stat")
	assert.Contains(t, errOut, "Operation not permitted")
	require.Equal(t, 2, currentHolders(t, x), "both leases survive")

	// The co-holder ends its own lease by closing it.
	co.Send("release")
	co.WaitLine("closed", patience)
	waitHolders(t, x, 1)
	root.Send("release")
	root.WaitLine("closed", patience)
	waitFree(t, e, x)

	// Two unprivileged users share y: neither may break it; once one
	// left, the lone holder may.
	y := d.Path("y")
	a := userHolder(t, e, nobodyID, sharedPath(y))
	b := userHolder(t, e, otherID, sharedPath(y))
	st, errOut = rmAs(t, otherID, y)
	assert.NotEqual(t, 0, st)
	assert.Contains(t, errOut, "Operation not permitted")
	b.Send("release")
	b.WaitLine("closed", patience)
	waitHolders(t, y, 1)
	st, errOut = rmAs(t, nobodyID, y)
	assert.Equal(t, 0, st, "a lone holder breaks its own lock: %s", errOut)
	d.WaitLog(patience, `msg="lock broken"`, "lock=y", "uid=65534")
	a.Send("release")
	a.WaitLine("closed", patience)
}

// lockfs status works with 2,000 shared holders on one name: the holders
// attribute stays below 64 KiB and ends with the count of those left out.
func TestStatusManySharedHolders(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	const n = 2000
	x := d.Path("many")
	// One process, n descriptors of .shared/many: n shared leases.
	script := `ulimit -n 8192 || exit 3
for ((i = 0; i < $2; i++)); do exec {fd}<"$1" || exit 1; done
echo granted; read _; echo closed`
	h := harness.Start(t, harness.ProcOptions{Name: "bash many", Path: e.BashPath,
		Args: []string{"-c", script, "bash", sharedPath(x), strconv.Itoa(n)}})
	h.WaitLine("granted", patience)
	holder := d.Path("other") // a second lock, listed after the big one
	other := userHolder(t, e, "", holder)

	st := lockfsCmd(t, e, "status", d.Mountpoint)
	require.Equal(t, 0, st.Wait(patience), st.Stderr())
	out := st.Stdout()
	var more int
	var others []string
	for line := range strings.SplitSeq(out, "\n") {
		if !strings.HasPrefix(line, "many ") {
			others = append(others, line)
		}
		if i := strings.Index(line, "... "); i >= 0 && strings.HasPrefix(line, "many ") {
			_, err := fmt.Sscanf(line[i:], "... %d more holders", &more)
			require.NoError(t, err, line)
		}
	}
	assert.Positive(t, more, "a row counts the holders left out")
	assert.True(t, strings.Contains(out, "\nother "), "the other lock is listed too; rows not of many: %q", others)

	js := lockfsCmd(t, e, "status", "--json", d.Mountpoint)
	require.Equal(t, 0, js.Wait(patience), js.Stderr())
	var rep struct {
		Locks []struct {
			Name           string            `json:"name"`
			Holders        []json.RawMessage `json:"holders"`
			HoldersOmitted int               `json:"holders_omitted"`
			Error          string            `json:"error"`
		} `json:"locks"`
	}
	require.NoError(t, json.Unmarshal([]byte(js.Stdout()), &rep))
	var found bool
	for _, lk := range rep.Locks {
		assert.Empty(t, lk.Error, lk.Name)
		if lk.Name == "many" {
			found = true
			assert.Equal(t, n, len(lk.Holders)+lk.HoldersOmitted, "listed plus omitted")
			assert.Equal(t, more, lk.HoldersOmitted)
		}
	}
	assert.True(t, found, "many is listed")

	h.Send("release")
	h.WaitLine("closed", patience)
	other.Send("release")
	other.WaitLine("closed", patience)
}
