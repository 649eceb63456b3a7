package e2e

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// While nobody holds x exclusively and another process waits for it,
// ls -l, stat, getxattr/listxattr and lockfs status (as nobody) show the
// lock, the holder (xattrs, status), token, state and waiters, and none of
// them blocks.
func TestInspectHeldLock(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	traversableTo(t, e, d.Mountpoint)
	x := d.Path("x")
	holder, token := tokenHolder(t, e, x, true)
	tok, err := strconv.ParseUint(token, 10, 64)
	require.NoError(t, err, "read -r tok <&9 gives the decimal token, got %q", token)
	require.NotZero(t, tok)
	waiter := e.Waiter(t, x, "w")

	// ls -l: owner and group are the root directory's (the daemon's,
	// root), so that the kernel's permission checks use them; the holder
	// is in user.lockfs.holders and lockfs status; the mtime is the grant
	// time.
	before := time.Now()
	ents := withTimeout(t, patience, "readdir", func() ([]os.DirEntry, error) { return os.ReadDir(d.Mountpoint) })
	require.Len(t, ents, 1)
	assert.Equal(t, "x", ents[0].Name())
	st := withTimeout(t, patience, "stat", func() (unix.Stat_t, error) {
		var st unix.Stat_t
		return st, unix.Lstat(x, &st)
	})
	assert.Equal(t, uint32(0), st.Uid, "owner is the directory's")
	assert.Equal(t, uint32(0), st.Gid, "group is the directory's")
	mtime := time.Unix(st.Mtim.Unix())
	assert.WithinDuration(t, before, mtime, time.Minute, "mtime is the grant time")
	assert.Equal(t, uint32(syscall.S_IFREG|0o666), st.Mode)

	ls := e.Bash(t, `ls -l "$M" && stat -c 'owner %u %g' "$M/x"`, "M="+d.Mountpoint)
	require.Equal(t, 0, ls.Wait(patience), "ls -l: %s", ls.Stderr())
	assert.Contains(t, ls.Stdout(), " x", "ls -l lists x")
	assert.Contains(t, ls.Stdout(), "owner 0 0", "stat shows the directory's owner, not the holder")

	// Extended attributes.
	assert.Equal(t, token, lockXattr(t, x, "user.lockfs.token"))
	assert.Equal(t, "exclusive", lockXattr(t, x, "user.lockfs.mode"))
	assert.Equal(t, "held", lockXattr(t, x, "user.lockfs.state"))
	assert.Equal(t, "1", lockXattr(t, x, "user.lockfs.waiters"))
	holders := strings.Split(strings.TrimSuffix(lockXattr(t, x, "user.lockfs.holders"), "\n"), "\n")
	require.Len(t, holders, 1)
	f := strings.Fields(holders[0])
	require.Len(t, f, 7, "holder line %q", holders[0])
	assert.Equal(t, []string{"65534", "65534", strconv.Itoa(holder.Pid()), "exclusive", token}, f[:5],
		"uid gid pid mode token (pid: the bash, in the daemon's pid namespace)")
	_, err = time.Parse(time.RFC3339Nano, f[5])
	assert.NoError(t, err, "granted is RFC 3339")
	assert.Equal(t, "open", f[6], "via: the holder's open took the lock")
	for _, a := range []string{"user.lockfs.acquired", "user.lockfs.heartbeat"} {
		_, err := time.Parse(time.RFC3339Nano, lockXattr(t, x, a))
		assert.NoError(t, err, a)
	}
	list := withTimeout(t, patience, "listxattr", func() (string, error) {
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(x, buf)
		return string(buf[:max(n, 0)]), err
	})
	for _, a := range []string{"token", "mode", "state", "holders", "waiters", "acquired", "heartbeat"} {
		assert.Contains(t, list, "user.lockfs."+a+"\x00")
	}
	_, err = unix.Lgetxattr(x, "security.capability", make([]byte, 64))
	assert.ErrorIs(t, err, unix.ENODATA)

	// lockfs status, as nobody: the table and --json.
	traversableTo(t, e, e.Lockfs)
	tbl := asNobody(t, "lockfs status", e.Lockfs, "status", d.Mountpoint)
	require.Equal(t, 0, tbl.Wait(patience), "lockfs status: %s", tbl.Stderr())
	lines := strings.Split(tbl.Stdout(), "\n")
	require.Len(t, lines, 2, "header and one row: %q", tbl.Stdout())
	assert.Equal(t, []string{"NAME", "STATE", "MODE", "TOKEN", "WAITERS", "UID", "GID", "PID", "VIA", "SINCE"}, strings.Fields(lines[0]))
	row := strings.Fields(lines[1])
	require.Len(t, row, 10)
	assert.Equal(t, []string{"x", "held", "exclusive", token, "1", "65534", "65534", strconv.Itoa(holder.Pid()), "open"}, row[:9])

	js := asNobody(t, "lockfs status --json", e.Lockfs, "status", "--json", d.Mountpoint)
	require.Equal(t, 0, js.Wait(patience), "lockfs status --json: %s", js.Stderr())
	var rep struct {
		Mount string `json:"mount"`
		Locks []struct {
			Name    string `json:"name"`
			State   string `json:"state"`
			Mode    string `json:"mode"`
			Token   uint64 `json:"token"`
			Waiters int    `json:"waiters"`
			Holders []struct {
				UID, GID, PID uint32
				Mode          string
				Token         uint64
				Granted       string
				Via           string
			} `json:"holders"`
		} `json:"locks"`
	}
	require.NoError(t, json.Unmarshal([]byte(js.Stdout()), &rep), "json: %s", js.Stdout())
	assert.Equal(t, d.Mountpoint, rep.Mount)
	require.Len(t, rep.Locks, 1)
	lk := rep.Locks[0]
	assert.Equal(t, "x", lk.Name)
	assert.Equal(t, "held", lk.State)
	assert.Equal(t, "exclusive", lk.Mode)
	assert.Equal(t, tok, lk.Token)
	assert.Equal(t, 1, lk.Waiters)
	require.Len(t, lk.Holders, 1)
	assert.Equal(t, uint32(65534), lk.Holders[0].UID)
	assert.Equal(t, uint32(holder.Pid()), lk.Holders[0].PID)
	assert.Equal(t, "open", lk.Holders[0].Via)

	// None of it took the lock: the holder still holds, the waiter waits.
	requireBlocked(t, waiter)
	holder.Send("release")
	holder.WaitLine("closed", patience)
	harness.Granted(t, waiter, patience)

	// A name nobody holds: the mount's owner, state free, no holders.
	var free unix.Stat_t
	require.NoError(t, unix.Lstat(d.Path("free"), &free))
	assert.Equal(t, uint32(0), free.Uid)
	assert.Equal(t, "free", lockXattr(t, d.Path("free"), "user.lockfs.state"))
	assert.Equal(t, "0", lockXattr(t, d.Path("free"), "user.lockfs.token"))
}

// The holder reads its token from the descriptor and getfattr's value is
// the same; tokens grow across grants and across a daemon restart on the
// same state directory.
func TestTokensIncreaseAcrossRestart(t *testing.T) {
	e := setup(t)
	sd := t.TempDir()
	d1 := e.StartDaemon(t, harness.DaemonConfig{StateDir: sd})
	var last uint64
	next := func(d *harness.Daemon) {
		t.Helper()
		p, token := tokenHolder(t, e, d.Path("t"), false)
		assert.Equal(t, token, lockXattr(t, d.Path("t"), "user.lockfs.token"), "getxattr token = the holder's")
		tok, err := strconv.ParseUint(token, 10, 64)
		require.NoError(t, err)
		require.Greater(t, tok, last, "tokens strictly increase")
		last = tok
		p.Send("release")
		p.WaitLine("closed", patience)
		waitFree(t, e, d.Path("t"))
	}
	next(d1)
	next(d1)
	d1.Signal(unix.SIGTERM)
	require.Equal(t, 0, d1.Wait(patience))
	d2 := e.StartDaemon(t, harness.DaemonConfig{StateDir: sd})
	next(d2)
	next(d2)
}

// A shared holder (exec 9<M/.shared/NAME) reads its token, then its
// record, from the descriptor.
func TestHolderRecord(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	script := `exec 9<"$1" || exit 1; read -r tok <&9; read -r rec <&9; echo "rec $tok $$ $rec"; read _`
	p := harness.Start(t, harness.ProcOptions{Name: "bash", Path: e.BashPath, Args: []string{"-c", script, "bash", sharedPath(d.Path("r"))}})
	f := p.WaitLine("rec", patience)
	require.GreaterOrEqual(t, len(f), 9, "record line %q", f)
	tok, pid := f[0], f[1]
	rec := map[string]string{}
	for _, kv := range f[2:] {
		k, v, ok := strings.Cut(kv, "=")
		require.True(t, ok, "field %q", kv)
		rec[k] = v
	}
	assert.Equal(t, "r", rec["name"])
	assert.Equal(t, "shared", rec["mode"])
	assert.Equal(t, tok, rec["token"])
	assert.Equal(t, "0", rec["uid"])
	assert.Equal(t, pid, rec["pid"])
	_, err := time.Parse(time.RFC3339Nano, rec["acquired"])
	assert.NoError(t, err)
	assert.Equal(t, "shared", lockXattr(t, d.Path("r"), "user.lockfs.mode"))
}

// lockfs status of an idle mount (found through $LOCKFS_MOUNT): the header
// only, or an empty list; a directory that is not a lockfs mount is an
// error.
func TestStatusIdle(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	p := harness.Start(t, harness.ProcOptions{Name: "lockfs status", Path: e.Lockfs, Args: []string{"status"},
		Env: []string{"LOCKFS_MOUNT=" + d.Mountpoint}})
	require.Equal(t, 0, p.Wait(patience), p.Stderr())
	assert.Equal(t, []string{"NAME", "STATE", "MODE", "TOKEN", "WAITERS", "UID", "GID", "PID", "VIA", "SINCE"}, strings.Fields(p.Stdout()))
	p = lockfsCmd(t, e, "status", "--json", d.Mountpoint)
	require.Equal(t, 0, p.Wait(patience), p.Stderr())
	assert.JSONEq(t, `{"mount":"`+d.Mountpoint+`","locks":[]}`, p.Stdout())
	p = lockfsCmd(t, e, "status", t.TempDir())
	assert.Equal(t, 1, p.Wait(patience))
	assert.Contains(t, p.Stderr(), "not a lockfs mount")
}
