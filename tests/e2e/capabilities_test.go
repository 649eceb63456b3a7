package e2e

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// unitFile is the systemd unit lockfs ships.
const unitFile = "../../contrib/systemd/lockfs.service"

// unitBoundingSet returns the capabilities of the unit's
// CapabilityBoundingSet= as setpriv --bounding-set takes them
// ("-all,+sys_admin,...").
func unitBoundingSet(t *testing.T) string {
	t.Helper()
	f, err := os.Open(unitFile)
	require.NoError(t, err)
	defer f.Close()
	set := "-all"
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "CapabilityBoundingSet=")
		if !ok {
			continue
		}
		found = true
		for c := range strings.FieldsSeq(v) {
			set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
	}
	require.NoError(t, sc.Err())
	require.True(t, found, "%s has no CapabilityBoundingSet=", unitFile)
	return set
}

// capDaemon starts a daemon on state directory state (empty: a new one)
// whose capabilities are limited to the bounding set (setpriv
// --bounding-set), as systemd limits them.
func capDaemon(t *testing.T, e *harness.Env, set, state string) *harness.Daemon {
	t.Helper()
	setpriv := setprivPath(t)
	d := e.StartDaemon(t, harness.DaemonConfig{StateDir: state, Exec: []string{setpriv, "--bounding-set", set, "--"}})
	usersCanReach(t, e, d)
	return d
}

// The capabilities the systemd unit leaves the daemon are enough for every
// operation of lock directories by users other than root: mkdir of a new
// name (the daemon reads the caller's /proc/PID/syscall), giving the
// directory to its maker, locking in a directory only its owner may
// enter, chmod with the set-group-ID bit, chown by root, rmdir and a
// break. Each one failed under the unit's former CAP_SYS_ADMIN alone.
func TestUnitCapabilities(t *testing.T) {
	e := setup(t)
	set := unitBoundingSet(t)
	t.Logf("the unit's bounding set: %s", set)
	d := capDaemon(t, e, set, "")

	code, _, errOut := runAs(t, alice, "mkdir", "-m", "0700", d.Path("team"))
	require.Equal(t, 0, code, "mkdir of a new name by alice: %s", errOut)
	requireAttr(t, d.Path("team"), dirWant(0o700, alice.uid, alice.gid))
	code, _, errOut = runAs(t, alice, "mkdir", d.Path("team/sub"))
	require.Equal(t, 0, code, "mkdir in her 0700 directory: %s", errOut)
	assert.Equal(t, "granted", openAs(t, e, alice, "w", d.Path("team/x")), "alice locks in her 0700 directory")
	assert.Equal(t, "EACCES", openAs(t, e, bob, "w", d.Path("team/x")), "bob cannot reach it")

	code, _, errOut = runAs(t, alice, "chmod", "2770", d.Path("team"))
	require.Equal(t, 0, code, "chmod 2770 by its owner: %s", errOut)
	requireAttr(t, d.Path("team"), dirWant(0o2770, alice.uid, alice.gid))
	code, _, errOut = runAs(t, alice, "mkdir", d.Path("team/sgid"))
	require.Equal(t, 0, code, "mkdir in a set-group-ID directory: %s", errOut)
	requireAttr(t, d.Path("team/sgid"), dirWant(0o2755, alice.uid, alice.gid))
	// What the backend keeps, as a second daemon of the state directory
	// reads it (the first one's cache may hold what it meant to store).
	d2 := capDaemon(t, e, set, d.StateDir)
	requireAttr(t, d2.Path("team"), dirWant(0o2770, alice.uid, alice.gid))
	requireAttr(t, d2.Path("team/sgid"), dirWant(0o2755, alice.uid, alice.gid))

	require.NoError(t, os.Chown(d.Path("team/sub"), int(bob.uid), int(bob.gid)), "root gives team/sub to bob")
	requireAttr(t, d.Path("team/sub"), dirWant(0o755, bob.uid, bob.gid))

	h := holdAs(t, e, alice, d.Path("team/held"), ">")
	code, _, errOut = runAs(t, alice, "rm", d.Path("team/held"))
	assert.Equal(t, 0, code, "the lone holder breaks her lock: %s", errOut)
	d.WaitLog(patience, `msg="lock broken"`, "lock=team/held")
	shellRelease(t, h)

	for _, p := range []string{"team/sgid", "team/sub"} {
		harness.Eventually(t, patience, func() (bool, string) {
			code, _, errOut := runAs(t, alice, "rmdir", d.Path(p))
			return code == 0, "rmdir " + p + " by alice: " + errOut
		})
	}
	assert.NotContains(t, d.Log(), "cannot tell whether the caller is in mkdir")
	assert.NotContains(t, d.Log(), "permission denied")
}

// A daemon with fewer capabilities than the unit's reports what it cannot
// do, and never pretends: without CAP_SYS_PTRACE it cannot read another
// user's /proc/PID/syscall, so that user's mkdir of a new name fails with
// EEXIST and the log says which capabilities are missing; without
// CAP_FSETID a chmod that sets the set-group-ID bit fails with EPERM,
// logged, instead of silently storing a mode without it.
func TestMissingCapabilitiesReported(t *testing.T) {
	e := setup(t)
	d := capDaemon(t, e, "-all,+sys_admin", "")
	code, _, errOut := runAs(t, alice, "mkdir", d.Path("team"))
	assert.NotEqual(t, 0, code, "mkdir of a new name without CAP_SYS_PTRACE")
	assert.Contains(t, errOut, "File exists")
	d.WaitLog(patience, `msg="cannot tell whether the caller is in mkdir`, "CAP_SYS_PTRACE", "lock=team", "uid=65533")

	set := strings.Replace(unitBoundingSet(t), ",+fsetid", "", 1)
	require.NotContains(t, set, "fsetid")
	n := capDaemon(t, e, set, "")
	code, _, errOut = runAs(t, alice, "mkdir", n.Path("team"))
	require.Equal(t, 0, code, "mkdir without CAP_FSETID: %s", errOut)
	code, _, errOut = runAs(t, alice, "chmod", "2770", n.Path("team"))
	assert.NotEqual(t, 0, code, "chmod g+s without CAP_FSETID")
	assert.Contains(t, errOut, "Operation not permitted")
	n.WaitLog(patience, `msg="setattr failed"`, "lock=team", "errno=EPERM", "CAP_FSETID")
	requireAttr(t, n.Path("team"), dirWant(0o755, alice.uid, alice.gid))
}
