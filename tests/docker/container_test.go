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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Mount flags of the tests. The daemon's view of the shared host directory is
// /share and lockfs mounts on /share/locks, a subdirectory: clients then bind
// the directory, not the FUSE mount, and see a remount after a daemon restart.
func shareMount(dir, propagation string) []string {
	return []string{"--mount", "type=bind,src=" + dir + ",dst=/share,bind-propagation=" + propagation}
}

func stateMount(volume string) []string {
	return []string{"--mount", "type=volume,src=" + volume + ",dst=/var/lib/lockfs"}
}

func dataMount(dir string) []string {
	return []string{"--mount", "type=bind,src=" + dir + ",dst=/data"}
}

func flags(groups ...[]string) []string {
	var out []string
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// waitHostMount waits until the host sees exactly one fuse.lockfs mount at
// point and can list it.
func waitHostMount(t *testing.T, point string) {
	t.Helper()
	waitFor(t, 30*time.Second, "host sees lockfs at "+point, func() error {
		if n := len(lockfsMountsAt(hostMounts(t), point)); n != 1 {
			return fmt.Errorf("%d fuse.lockfs mounts at %s", n, point)
		}
		_, err := withTimeout(t, "list "+point, func() ([]os.DirEntry, error) { return os.ReadDir(point) })
		return err
	})
}

// parallel runs the functions concurrently and returns their outputs in
// order; errors are reported after all have finished.
func parallel(t *testing.T, fns ...func() result) []string {
	t.Helper()
	res := make([]result, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = fn()
		}()
	}
	wg.Wait()
	outs := make([]string, len(res))
	for i, r := range res {
		require.NoError(t, r.err, "worker group %d: %v", i, r)
		outs[i] = r.stdout
	}
	return outs
}

// TestSingleContainer runs lockfs in one container and shell clients in it
// via docker exec.
func TestSingleContainer(t *testing.T) {
	image := setup(t)
	state := newVolume(t, "state")
	d := startDaemon(t, image, "daemon", stateMount(state), "/mnt/locks")

	t.Log("exclusive: exec 9> holds, try and timeout fail, waiter gets it next")
	h := d.hold("a1", ">", "/mnt/locks/a")
	h.waitState("held")
	require.False(t, d.try(">", "/mnt/locks/.try/a"), "exclusive lock granted twice")
	require.False(t, d.try("<", "/mnt/locks/.try/a"), "shared lock granted over an exclusive one")
	require.Contains(t, strings.Fields(d.mustSh("ls /mnt/locks")), "a")
	w := d.hold("a2", ">", "/mnt/locks/a")
	r := d.sh("{ :; } 9>/mnt/locks/.timeout/0.5/a")
	require.NotZero(t, r.code, ".timeout open of a held lock succeeded: %v", r)
	require.Contains(t, r.stderr, "Resource temporarily unavailable", "%v", r)
	r = d.sh("timeout 1 sh -c 'exec 9>/mnt/locks/a'; echo rc=$?")
	require.Contains(t, r.stdout, "rc=143", "busybox timeout should kill the waiting open: %v", r)
	w.requireState("waiting")
	h.kill()
	w.waitState("held")
	require.False(t, d.try(">", "/mnt/locks/.try/a"))
	w.kill()
	waitFor(t, 10*time.Second, "a released", func() error {
		if !d.try(">", "/mnt/locks/.try/a") {
			return fmt.Errorf("still held")
		}
		return nil
	})

	t.Log("shared: exec 9<M/.shared/NAME holders coexist and exclude a writer")
	r1 := d.hold("s1", "<", "/mnt/locks/.shared/s")
	r1.waitState("held")
	r2 := d.hold("s2", "<", "/mnt/locks/.shared/s")
	r2.waitState("held")
	require.False(t, d.try(">", "/mnt/locks/.try/s"), "exclusive lock granted over shared ones")
	require.True(t, d.try("<", "/mnt/locks/.try/s"), "shared lock refused next to shared ones")
	r1.kill()
	require.False(t, d.try(">", "/mnt/locks/.try/s"), "exclusive lock granted while a shared one is held")
	r2.kill()
	waitFor(t, 10*time.Second, "s released", func() error {
		if !d.try(">", "/mnt/locks/.try/s") {
			return fmt.Errorf("still held")
		}
		return nil
	})

	t.Log("counter torture: 8 workers x 200")
	d.mustSh("echo 0 >/tmp/counter")
	out := d.mustSh(tortureScript("/mnt/locks/counter", "/tmp/counter", 8, 200))
	checkTorture(t, 8, out)
	require.Equal(t, "1600", d.mustSh("cat /tmp/counter"), "lost updates")
	waitFor(t, 10*time.Second, "no name listed", func() error {
		if ls := d.mustSh("ls /mnt/locks"); ls != "" {
			return fmt.Errorf("ls lists %q", ls)
		}
		return nil
	})
}

// TestSharedMount shares one daemon container's mount with two client
// containers and the host through mount propagation.
func TestSharedMount(t *testing.T) {
	image := setup(t)
	share := sharedDir(t, "share")
	data := testDir(t, "data")
	state := newVolume(t, "state")
	hostLocks := filepath.Join(share, "locks")
	startDaemon(t, image, "daemon", flags(shareMount(share, "rshared"), stateMount(state)), "/share/locks")
	waitHostMount(t, hostLocks)
	c1 := startClient(t, image, "c1", flags(shareMount(share, "rslave"), dataMount(data)))
	c2 := startClient(t, image, "c2", flags(shareMount(share, "rslave"), dataMount(data)))
	c1.waitMounted("/share/locks")
	c2.waitMounted("/share/locks")

	t.Log("clients in different containers exclude each other; the host sees the lock")
	h := c1.hold("x1", ">", "/share/locks/x")
	h.waitState("held")
	require.False(t, c2.try(">", "/share/locks/.try/x"), "lock granted in two containers")
	require.False(t, c2.try("<", "/share/locks/.try/x"))
	require.False(t, hostTry(t, filepath.Join(hostLocks, ".try", "x")), "host got a lock a container holds")
	require.Contains(t, hostList(t, hostLocks), "x")
	w := c2.hold("x2", ">", "/share/locks/x")
	require.False(t, c2.try(">", "/share/locks/.try/x"))
	w.requireState("waiting")
	h.kill()
	w.waitState("held")
	require.False(t, c1.try(">", "/share/locks/.try/x"))
	require.False(t, hostTry(t, filepath.Join(hostLocks, ".try", "x")))
	w.kill()
	waitFor(t, 10*time.Second, "x released", func() error {
		if !hostTry(t, filepath.Join(hostLocks, ".try", "x")) {
			return fmt.Errorf("still held")
		}
		return nil
	})

	t.Log("a lock the host takes excludes the containers")
	f := hostOpen(t, filepath.Join(hostLocks, "y"))
	require.False(t, c1.try(">", "/share/locks/.try/y"), "container got a lock the host holds")
	require.False(t, c2.try("<", "/share/locks/.try/y"))
	require.NoError(t, f.Close())
	waitFor(t, 10*time.Second, "y released", func() error {
		if !c2.try(">", "/share/locks/.try/y") {
			return fmt.Errorf("still held")
		}
		return nil
	})

	t.Log("counter torture across two containers and the host: 3+3+2 workers x 200")
	require.NoError(t, os.WriteFile(filepath.Join(data, "counter"), []byte("0\n"), 0o666))
	outs := parallel(t,
		func() result { return c1.sh(tortureScript("/share/locks/counter", "/data/counter", 3, 200)) },
		func() result { return c2.sh(tortureScript("/share/locks/counter", "/data/counter", 3, 200)) },
		func() result {
			return hostSh(context.Background(), tortureScript(filepath.Join(hostLocks, "counter"), filepath.Join(data, "counter"), 2, 200))
		},
	)
	checkTorture(t, 8, outs...)
	got, err := os.ReadFile(filepath.Join(data, "counter"))
	require.NoError(t, err)
	require.Equal(t, "1600", strings.TrimSpace(string(got)), "lost updates")
}

// TestSharedBackingVolume runs two daemon containers on one state volume:
// they exclude each other, and killing one frees its names for the other.
func TestSharedBackingVolume(t *testing.T) {
	image := setup(t)
	share := sharedDir(t, "share")
	data := testDir(t, "data")
	state := newVolume(t, "state")
	d1 := startDaemon(t, image, "d1", flags(shareMount(share, "rshared"), stateMount(state), dataMount(data)), "/share/locks")
	d2 := startDaemon(t, image, "d2", flags(stateMount(state), dataMount(data)), "/mnt/locks")

	t.Log("the two daemons exclude each other")
	h := d1.hold("x1", ">", "/share/locks/x")
	h.waitState("held")
	require.False(t, d2.try(">", "/mnt/locks/.try/x"), "lock granted by two daemons")
	require.False(t, d2.try("<", "/mnt/locks/.try/x"))
	h.kill()
	waitFor(t, 10*time.Second, "x released across daemons", func() error {
		if !d2.try(">", "/mnt/locks/.try/x") {
			return fmt.Errorf("still held")
		}
		return nil
	})
	r := d2.hold("s1", "<", "/mnt/locks/.shared/s")
	r.waitState("held")
	require.True(t, d1.try("<", "/share/locks/.try/s"), "shared lock refused across daemons")
	require.False(t, d1.try(">", "/share/locks/.try/s"))
	r.kill()

	t.Log("counter torture split across both daemons: 4+4 workers x 200")
	require.NoError(t, os.WriteFile(filepath.Join(data, "counter"), []byte("0\n"), 0o666))
	outs := parallel(t,
		func() result { return d1.sh(tortureScript("/share/locks/counter", "/data/counter", 4, 200)) },
		func() result { return d2.sh(tortureScript("/mnt/locks/counter", "/data/counter", 4, 200)) },
	)
	checkTorture(t, 8, outs...)
	got, err := os.ReadFile(filepath.Join(data, "counter"))
	require.NoError(t, err)
	require.Equal(t, "1600", strings.TrimSpace(string(got)), "lost updates")

	t.Log("docker kill of the daemon holding a name")
	c := startClient(t, image, "client", shareMount(share, "rslave"))
	c.waitMounted("/share/locks")
	hk := c.hold("k1", ">", "/share/locks/k")
	hk.waitState("held")
	wk := c.hold("k2", ">", "/share/locks/k")
	w2 := d2.hold("k3", ">", "/mnt/locks/k")
	require.False(t, d2.try(">", "/mnt/locks/.try/k"))
	w2.requireState("waiting")
	wk.requireState("waiting")
	killedAt := uptime(t)
	dockerT(t, "kill", d1.name)
	w2.waitState("held")
	freed := time.Duration((w2.heldAt() - killedAt) * float64(time.Second))
	t.Logf("name freed for the other daemon %v after docker kill was called (bound asserted: 10s)", freed.Round(time.Millisecond))
	assert.Less(t, freed, 10*time.Second, "killed daemon's name not freed in time")

	t.Log("the killed daemon's clients see errors, never a silent lock")
	hk.waitState("lost")
	st := wk.waitState("exit")
	require.NotContains(t, st, "held", "waiter of the killed daemon was granted")
	require.NotContains(t, st, "exit 0")
	for _, h := range []*holder{hk, wk} {
		st, errOut := h.state()
		t.Logf("client %s after kill: %q, stderr %q", h.id, st, errOut)
	}
	for _, p := range []string{"/share/locks/k", "/share/locks/.try/k", "/share/locks/other"} {
		e := c.tryErr(">", p)
		require.NotEmpty(t, e, "open of %s through the killed daemon succeeded", p)
		t.Logf("open %s after kill: %s", p, e)
	}
	require.False(t, d2.try(">", "/mnt/locks/.try/k"), "the surviving daemon's holder lost k")
}

// TestStopWithHoldersAndWaiters stops a daemon container that has holders and
// blocked waiters, in its own container and in a client container.
func TestStopWithHoldersAndWaiters(t *testing.T) {
	image := setup(t)
	share := sharedDir(t, "share")
	state := newVolume(t, "state")
	hostLocks := filepath.Join(share, "locks")
	d := startDaemon(t, image, "daemon", flags(shareMount(share, "rshared"), stateMount(state)), "/share/locks")
	waitHostMount(t, hostLocks)
	c := startClient(t, image, "client", shareMount(share, "rslave"))
	c.waitMounted("/share/locks")

	hd := d.hold("a1", ">", "/share/locks/a")
	hd.waitState("held")
	wd := d.hold("a2", ">", "/share/locks/a")
	hc := c.hold("b1", ">", "/share/locks/b")
	hc.waitState("held")
	wc := c.hold("b2", ">", "/share/locks/b")
	wcs := c.hold("a3", "<", "/share/locks/.shared/a")
	require.False(t, c.try(">", "/share/locks/.try/b"))
	require.False(t, c.try("<", "/share/locks/.try/a"))
	for _, w := range []*holder{wd, wc, wcs} {
		w.requireState("waiting")
	}
	pids := append(containerPids(t, d), containerPids(t, c)...)

	start := time.Now()
	r := dockerRun(context.Background(), "stop", "-t", "10", d.name)
	took := time.Since(start)
	require.NoError(t, r.err)
	t.Logf("docker stop took %v", took.Round(time.Millisecond))
	code := dockerT(t, "inspect", "--format", "{{.State.ExitCode}}", d.name)
	require.Equal(t, "0", code, "lockfs did not exit cleanly on SIGTERM before docker's 10 s kill deadline")
	require.Less(t, took, 15*time.Second)

	waitFor(t, 10*time.Second, "no lockfs mount left on the host", func() error {
		if m := lockfsMountsAt(hostMounts(t), hostLocks); len(m) > 0 {
			return fmt.Errorf("%d fuse.lockfs mounts at %s", len(m), hostLocks)
		}
		return nil
	})
	waitFor(t, 10*time.Second, "no lockfs mount left in the client container", func() error {
		if m := c.lockfsMounts(); len(m) > 0 {
			return fmt.Errorf("%+v", m)
		}
		return nil
	})
	hc.waitState("lost")
	for _, w := range []*holder{wc, wcs} {
		st := w.waitState("exit")
		require.NotContains(t, st, "held", "waiter %s granted by a stopped daemon", w.id)
		require.NotContains(t, st, "exit 0")
	}
	for _, h := range []*holder{hc, wc, wcs} {
		st, errOut := h.state()
		t.Logf("client %s after stop: %q, stderr %q", h.id, st, errOut)
	}
	waitFor(t, 10*time.Second, "no process in D state", func() error {
		for _, pid := range pids {
			if processState(pid) == "D" {
				return fmt.Errorf("pid %d is in D state", pid)
			}
		}
		return nil
	})
}

// TestRestart kills a daemon container and starts it again on the same host
// directory: rslave clients use the new mount without being restarted.
func TestRestart(t *testing.T) {
	image := setup(t)
	share := sharedDir(t, "share")
	state := newVolume(t, "state")
	hostLocks := filepath.Join(share, "locks")
	d := startDaemon(t, image, "daemon", flags(shareMount(share, "rshared"), stateMount(state)), "/share/locks")
	waitHostMount(t, hostLocks)
	// Started after the mount is up, the client's view holds it as a
	// submount of its bind of the shared directory.
	c := startClient(t, image, "client", shareMount(share, "rslave"))
	c.waitMounted("/share/locks")
	h := c.hold("x1", ">", "/share/locks/x")
	h.waitState("held")

	dockerT(t, "kill", d.name)
	h.waitState("lost")
	require.NotEmpty(t, c.tryErr(">", "/share/locks/.try/y"), "open through a killed daemon succeeded")

	dockerT(t, "start", d.name)
	d.waitMounted("/share/locks")
	waitHostMount(t, hostLocks)
	waitFor(t, 30*time.Second, "client uses the new mount", func() error {
		if e := c.tryErr(">", "/share/locks/.try/x"); e != "" {
			return fmt.Errorf("open: %s", e)
		}
		return nil
	})
	require.Len(t, lockfsMountsAt(c.lockfsMounts(), "/share/locks"), 1)
	h2 := c.hold("x2", ">", "/share/locks/x")
	h2.waitState("held")
	require.False(t, hostTry(t, filepath.Join(hostLocks, ".try", "x")), "host and client see different locks")
	h2.kill()
	waitFor(t, 10*time.Second, "x released", func() error {
		if !hostTry(t, filepath.Join(hostLocks, ".try", "x")) {
			return fmt.Errorf("still held")
		}
		return nil
	})
}

// TestMkdirInDaemonContainer: in the daemon's container, root makes lock
// directories with the documented flags alone; another user's mkdir of a
// new name needs --cap-add SYS_PTRACE as well (the daemon reads the
// caller's /proc/PID/syscall). Without it the mkdir fails with EEXIST and
// the daemon's log names the missing capability.
func TestMkdirInDaemonContainer(t *testing.T) {
	image := setup(t)
	d := startDaemon(t, image, "daemon", nil, "/mnt/locks")
	d.mustSh("mkdir /mnt/locks/byroot")
	require.Equal(t, "0", d.mustSh("stat -c %u /mnt/locks/byroot"))
	r := dockerRun(context.Background(), "exec", "-u", "1000:1000", d.name, "mkdir", "/mnt/locks/byuser")
	require.Error(t, r.err, "mkdir by uid 1000 without CAP_SYS_PTRACE")
	assert.Contains(t, r.stderr, "File exists")
	waitFor(t, 30*time.Second, "the daemon's warning", func() error {
		logs := dockerRun(context.Background(), "logs", d.name)
		if !strings.Contains(logs.stdout+logs.stderr, "cannot tell whether the caller is in mkdir") {
			return fmt.Errorf("no warning in the log yet")
		}
		return nil
	})

	p := startDaemon(t, image, "ptrace", []string{"--cap-add", "SYS_PTRACE"}, "/mnt/locks")
	r = dockerRun(context.Background(), "exec", "-u", "1000:1000", p.name, "mkdir", "/mnt/locks/byuser")
	require.NoError(t, r.err, "mkdir by uid 1000 with CAP_SYS_PTRACE: %v", r)
	require.Equal(t, "1000 1000", p.mustSh("stat -c '%u %g' /mnt/locks/byuser"))
}
