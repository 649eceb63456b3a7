package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

var (
	hostLockfsOnce sync.Once
	hostLockfsBin  string
	hostLockfsErr  error
)

// hostDaemon runs `lockfs mount` on the host (the test process's mount
// namespace, which dockerd shares), through the end-to-end harness: a
// fresh mountpoint below this test's directory (so that the sweep of a
// dead run detaches a leftover mount), a fresh state directory. The
// harness stops it (SIGTERM, then SIGKILL) and detaches its mount when t
// ends; containers started after this call are removed before that.
func hostDaemon(t *testing.T) *harness.Daemon {
	t.Helper()
	hostLockfsOnce.Do(func() {
		dir := filepath.Join(runDir, "bin")
		if hostLockfsErr = os.MkdirAll(dir, 0o755); hostLockfsErr != nil {
			return
		}
		hostLockfsBin = filepath.Join(dir, "lockfs")
		hostLockfsErr = harness.Build(hostLockfsBin, "github.com/lockfs/lockfs/cmd/lockfs")
	})
	require.NoError(t, hostLockfsErr)
	mnt := testDir(t, "mnt")
	env := &harness.Env{Root: runDir, Lockfs: hostLockfsBin}
	return env.StartDaemon(t, harness.DaemonConfig{Mountpoint: mnt, LogLevel: "info"})
}

// subtreeMount is the flag that bind-mounts the host directory src (a
// lock directory of the host's mount) at /locks.
func subtreeMount(src string) []string {
	return []string{"--mount", "type=bind,src=" + src + ",dst=/locks"}
}

// hostLock opens path (M/NAME) from the host as the shell's > does
// (O_WRONLY|O_CREAT|O_TRUNC: an exclusive lock), which must be granted in
// time; the file is closed when t ends if still open.
func hostLock(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := withTimeout(t, "open "+path, func() (*os.File, error) {
		return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	})
	require.NoError(t, err, "host open %s", path)
	t.Cleanup(func() { f.Close() })
	return f
}

// blocks reports whether an exclusive open of path in c waits: the open
// is killed by busybox timeout after one second (exit 143) instead of
// succeeding (0). Anything else fails the test.
func (c *container) blocks(path string) bool {
	c.t.Helper()
	r := c.sh(fmt.Sprintf("timeout 1 sh -c 'exec 9>%s'; echo rc=$?", path))
	require.NoError(c.t, r.err, "in %s: open %s", c.name, path)
	switch strings.TrimSpace(r.stdout) {
	case "rc=143":
		return true
	case "rc=0":
		return false
	}
	c.t.Fatalf("in %s: exclusive open of %s: %v", c.name, path, r)
	return false
}

// The deployment of docs/docker.md for a subtree per container: the daemon
// runs on the host and owns the mount M; the host bind-mounts the lock
// directory M/teamA into container A and M/teamB into container B. Each
// container sees only its subtree: it lists the names held there (by the
// host or itself) and no others, and cannot reach a name outside it. The
// names in it are the host's locks: a holder on the host excludes the
// container and the other way round, and a counter torture by the host and
// the container on one name ends exact, while container B's name of the
// same leaf is another lock.
func TestSubtreePerContainer(t *testing.T) {
	image := setup(t)
	d := hostDaemon(t)
	m := d.Mountpoint
	for _, dir := range []string{"teamA", "teamB", "teamA/app"} {
		require.NoError(t, os.Mkdir(filepath.Join(m, dir), 0o755), "mkdir M/%s on the host", dir)
	}
	dataA, dataB := testDir(t, "data-a"), testDir(t, "data-b")
	a := startClient(t, image, "a", flags(subtreeMount(filepath.Join(m, "teamA")), dataMount(dataA)))
	b := startClient(t, image, "b", flags(subtreeMount(filepath.Join(m, "teamB")), dataMount(dataB)))

	t.Log("each container has one lockfs mount, at /locks, whose root is its subtree")
	for _, c := range []struct {
		c    *container
		root string
	}{{a, "/teamA"}, {b, "/teamB"}} {
		ms := c.c.lockfsMounts()
		require.Len(t, ms, 1, "fuse.lockfs mounts in %s", c.c.name)
		require.Equal(t, "/locks", ms[0].Point)
		require.Equal(t, c.root, ms[0].Root, "the directory of the filesystem mounted at /locks in %s", c.c.name)
	}

	t.Log("the host holds teamA/h, teamB/h2 and the top-level top: each container lists its own only")
	hA := hostLock(t, filepath.Join(m, "teamA", "h"))
	hB := hostLock(t, filepath.Join(m, "teamB", "h2"))
	hTop := hostLock(t, filepath.Join(m, "top"))
	require.Equal(t, []string{"app", "h"}, strings.Fields(a.mustSh("ls /locks")), "ls /locks in A")
	require.Equal(t, []string{"h2"}, strings.Fields(b.mustSh("ls /locks")), "ls /locks in B")

	t.Log("nothing outside the subtree can be reached")
	for _, path := range []string{"/locks/../teamB/h2", "/locks/../top", "/locks/../teamB"} {
		r := a.sh("ls " + path)
		require.NotZero(t, r.code, "ls %s in A: %v", path, r)
	}
	r := a.sh("{ :; } 9>/locks/../teamB/h2")
	require.NotZero(t, r.code, "open of /locks/../teamB/h2 in A: %v", r)
	require.Contains(t, r.stderr, "nonexistent directory", "open of /locks/../teamB/h2 in A: %v", r)
	require.Contains(t, strings.Fields(a.mustSh("ls /locks/..")), "bin", "/locks/.. in A is the container's root")

	t.Log("a holder on the host excludes the container, and hands over on release")
	require.True(t, a.blocks("/locks/h"), "A got teamA/h while the host holds it")
	require.True(t, b.blocks("/locks/h2"), "B got teamB/h2 while the host holds it")
	w := a.hold("wa", ">", "/locks/h")
	w.requireState("waiting")
	require.NoError(t, hA.Close())
	w.waitState("held")
	require.False(t, hostTry(t, filepath.Join(m, ".try", "teamA", "h")), "the host got teamA/h while A holds it")
	w.kill()
	waitFor(t, 10*time.Second, "teamA/h free for the host", func() error {
		if !hostTry(t, filepath.Join(m, ".try", "teamA", "h")) {
			return fmt.Errorf("still held")
		}
		return nil
	})
	require.NoError(t, hB.Close())
	require.NoError(t, hTop.Close())

	t.Log("a holder in the container excludes the host; B's y is another lock than A's")
	ya := a.hold("ya", ">", "/locks/y")
	ya.waitState("held")
	require.False(t, hostTry(t, filepath.Join(m, ".try", "teamA", "y")), "the host got teamA/y while A holds it")
	require.Contains(t, hostList(t, filepath.Join(m, "teamA")), "y", "ls M/teamA on the host")
	require.NotContains(t, strings.Fields(b.mustSh("ls /locks")), "y", "ls /locks in B while A holds its y")
	require.True(t, hostTry(t, filepath.Join(m, ".try", "y")), "the top-level y is another lock")
	yb := b.hold("yb", ">", "/locks/y")
	yb.waitState("held")
	require.False(t, hostTry(t, filepath.Join(m, ".try", "teamB", "y")), "the host got teamB/y while B holds it")
	ya.kill()
	waitFor(t, 10*time.Second, "teamA/y free for the host", func() error {
		if !hostTry(t, filepath.Join(m, ".try", "teamA", "y")) {
			return fmt.Errorf("still held")
		}
		return nil
	})
	require.False(t, hostTry(t, filepath.Join(m, ".try", "teamB", "y")), "teamB/y is still B's")
	yb.kill()

	t.Log("directories made in a container are the host's")
	a.mustSh("mkdir -p /locks/p/q/r")
	fi, err := os.Stat(filepath.Join(m, "teamA", "p", "q", "r"))
	require.NoError(t, err, "M/teamA/p/q/r on the host")
	require.True(t, fi.IsDir())
	n := a.hold("n", ">", "/locks/p/q/r/n")
	n.waitState("held")
	require.False(t, hostTry(t, filepath.Join(m, ".try", "teamA", "p", "q", "r", "n")), "the host got teamA/p/q/r/n while A holds it")
	n.kill()

	t.Log("the views work inside the subtree: /locks/.try, .timeout, .shared, lockfs run -n")
	hv := hostLock(t, filepath.Join(m, "teamA", "app", "v"))
	for _, path := range []string{"/locks/.try/app/v", "/locks/app/.try/v", "/locks/.timeout/0.3/app/v"} {
		r := a.sh("{ :; } 9>" + path)
		require.NotZero(t, r.code, "exclusive open of %s in A while the host holds teamA/app/v: %v", path, r)
		require.Contains(t, r.stderr, "Resource temporarily unavailable", "open of %s in A: %v", path, r)
	}
	r = a.sh("lockfs run -n /locks/app/v true")
	require.Equal(t, 1, r.code, "lockfs run -n in A while the host holds teamA/app/v: %v", r)
	r = a.sh("lockfs run -n -s /locks/app/v true; echo rc=$?")
	require.Contains(t, r.stdout, "rc=1", "lockfs run -n -s in A: %v", r)
	require.NoError(t, hv.Close())
	waitFor(t, 10*time.Second, "teamA/app/v free for A", func() error {
		if r := a.sh("lockfs run -n /locks/app/v true"); r.code != 0 {
			return fmt.Errorf("lockfs run -n: %v", r)
		}
		return nil
	})
	require.Equal(t, "ok", a.mustSh("{ :; } 9</locks/.shared/app/v && echo ok"), "a shared lock through /locks/.shared")

	t.Log("counter torture: A and the host on teamA/c (2+2 workers x 100), B on teamB/c (2 x 100) meanwhile")
	require.NoError(t, os.WriteFile(filepath.Join(dataA, "counter"), []byte("0\n"), 0o666))
	require.NoError(t, os.WriteFile(filepath.Join(dataB, "counter"), []byte("0\n"), 0o666))
	outs := parallel(t,
		func() result { return a.sh(tortureScript("/locks/c", "/data/counter", 2, 100)) },
		func() result {
			return hostSh(context.Background(), tortureScript(filepath.Join(m, "teamA", "c"), filepath.Join(dataA, "counter"), 2, 100))
		},
		func() result { return b.sh(tortureScript("/locks/c", "/data/counter", 2, 100)) },
	)
	checkTorture(t, 6, outs...)
	for _, c := range []struct{ dir, want string }{{dataA, "400"}, {dataB, "200"}} {
		got, err := os.ReadFile(filepath.Join(c.dir, "counter"))
		require.NoError(t, err)
		require.Equal(t, c.want, strings.TrimSpace(string(got)), "lost updates in %s", c.dir)
	}
}
