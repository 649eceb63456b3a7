package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Two daemons on one etcd exclude each other, hand over to each other's
// waiters, share shared locks, and their fencing tokens of one name
// increase strictly whichever daemon grants.
func TestEtcdTwoDaemonsExclude(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	a, b, _ := etcdPair(t, e, s, 0)

	h := e.Hold(t, a.Path("x"), "w")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "w"), "exclusive on B while A holds")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("x"), "r"), "shared on B while A holds")
	w := e.Waiter(t, b.Path("x"), "w")
	released := harness.Release(t, h)
	granted := harness.Granted(t, w, patience)
	t.Logf("cross-daemon handoff through etcd: %s", ms(granted-released))
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("x"), "r"), "shared on A while B holds")
	harness.Release(t, w)
	waitFree(t, e, a.Path("x"))

	// Shared holders through different daemons share the lock; a writer
	// waits for both.
	r := e.Hold(t, sharedPath(a.Path("s")), "r")
	rb := e.Hold(t, sharedPath(b.Path("s")), "r")
	assert.Equal(t, "EAGAIN", probe(t, e, b.Path("s"), "w"))
	assert.Equal(t, "EAGAIN", probe(t, e, a.Path("s"), "w"))
	wa := e.Waiter(t, a.Path("s"), "w")
	harness.Release(t, r)
	stayBlocked(t, wa, 300*time.Millisecond) // rb on B still holds
	harness.Release(t, rb)
	harness.Granted(t, wa, patience)
	harness.Release(t, wa)

	// Fencing tokens (as the daemons log them): exclusive grants of one
	// name alternate between the daemons, each token larger than the last.
	requireRisingTokens(t, e, a, b)
}

// Counter torture: 8 shell workers x 200 increments under exec 9>M/c,
// split across two daemons on one etcd, end exactly at 1600.
func TestEtcdCounterTorture(t *testing.T) {
	e := setup(t)
	const workers, increments = 8, 200
	s := startEtcd(t, e)
	prefix := "/lockfs-e2e/torture/"
	c := etcdDaemonConfig(s, prefix, 0)
	c.LogLevel = "info"
	ds := []*harness.Daemon{e.StartDaemon(t, c), e.StartDaemon(t, c)}
	counter := filepath.Join(t.TempDir(), "counter")
	require.NoError(t, os.WriteFile(counter, []byte("0\n"), 0o644))

	start := time.Now()
	var ps []*harness.Proc
	for i := range workers {
		ps = append(ps, e.Bash(t, counterWorker,
			"M="+ds[i%2].Mountpoint, "C="+counter, "N="+strconv.Itoa(increments)))
	}
	for _, p := range ps {
		p.WaitLine("done", 3*time.Minute)
		require.Equal(t, 0, p.Wait(patience), "worker: %s", p.Stderr())
	}
	got, err := os.ReadFile(counter)
	require.NoError(t, err)
	t.Logf("%d x %d increments across two daemons on etcd in %v", workers, increments, time.Since(start))
	assert.Equal(t, strconv.Itoa(workers*increments), strings.TrimSpace(string(got)))
	// Nothing is left in etcd once every worker has closed: no keys under
	// the name.
	cl := s.client(t)
	harness.Eventually(t, patience, func() (bool, string) {
		keys := requestKeys(t, cl, prefix, "c")
		return len(keys) == 0, "keys left: " + strings.Join(keys, ",")
	})
}

// An interrupted open (a waiter killed by timeout(1)) removes its waiter
// key at once: only the holder's key stays under the name.
func TestEtcdInterruptedOpenLeavesNoKey(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	a, b, prefix := etcdPair(t, e, s, 0)
	cl := s.client(t)

	h := e.Hold(t, a.Path("x"), "w")
	for _, d := range []*harness.Daemon{a, b} {
		p := e.Bash(t, `timeout 1 sh -c 'exec 9>"$P"'; echo rc=$?`, "P="+d.Path("x"))
		p.WaitLine("rc=124", patience) // timeout(1)'s code for a command it killed
		require.Equal(t, 0, p.Wait(patience))
		harness.Eventually(t, patience, func() (bool, string) {
			keys := requestKeys(t, cl, prefix, "x")
			return len(keys) == 1 && hasSuffixAll(keys, ownerSuffix(a)),
				"request keys of x (want only holder pid " + strconv.Itoa(a.Pid()) + "): " + strings.Join(keys, ",")
		})
	}
	requireHeld(t, e, b.Path("x"))
	harness.Release(t, h)
	harness.Eventually(t, patience, func() (bool, string) {
		keys := requestKeys(t, cl, prefix, "x")
		return len(keys) == 0, "keys left after release: " + strings.Join(keys, ",")
	})
	waitFree(t, e, b.Path("x"))
}

// etcd unreachable at start: a clear error, exit 1, nothing mounted.
func TestEtcdUnreachableAtStart(t *testing.T) {
	e := setup(t)
	c := harness.DaemonConfig{Args: []string{"--engine", "etcd", "--etcd-endpoints", freeLoopbackURLs(t, 1)[0],
		"--etcd-dial-timeout", "1s"}}
	d := e.SpawnDaemon(t, c)
	require.Equal(t, 1, d.Wait(patience), "exit code; log:\n%s", d.Log())
	assert.False(t, d.Mounted(), "mounted although etcd is unreachable")
	assert.Contains(t, d.Log(), "unreachable", "the error names the cause")
}
