package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// soakDuration is how long the short soak's clients and chaos run; the
// shutdown and the check add five to ten seconds.
const soakDuration = 35 * time.Second

// A short soak (lockfs-bench soak, the dir backend, two daemons on one
// state directory, chaos on) ends with no violation, prints every figure,
// and leaves no process, mount or temporary directory behind.
//
// It does not run in parallel with the other tests: the soak loads the
// machine on its own, and the other tests' timing would make it slower
// to finish without making it find more.
func TestSoakShort(t *testing.T) {
	env.Require(t)
	if testing.Short() {
		t.Skip("a 35 s soak; not in -short")
	}
	e := env
	bench := filepath.Join(e.Root, "bin", "lockfs-bench")
	require.NoError(t, harness.Build(bench, "github.com/lockfs/lockfs/cmd/lockfs-bench"))
	tmp := t.TempDir()
	p := harness.Start(t, harness.ProcOptions{Name: "lockfs-bench soak", Path: bench,
		Args: []string{"soak", "-duration", soakDuration.String(), "-daemons", "2", "-clients", "60", "-names", "8",
			"-lockfs", e.Lockfs},
		Env: []string{"TMPDIR=" + tmp}})
	// On a failure, let the soak clean up (it stops its daemons and
	// unmounts on SIGTERM) before the harness kills its process group.
	t.Cleanup(func() {
		select {
		case <-p.Done():
		default:
			p.Signal(unix.SIGTERM)
			p.Wait(patience)
		}
	})
	code := p.Wait(soakDuration + 2*time.Minute)
	out := strings.Join(p.Lines(), "\n")
	t.Logf("lockfs-bench soak:\n%s", out)
	if code != 0 {
		t.Logf("its stderr:\n%s", p.Stderr())
	}
	require.Equal(t, 0, code, "lockfs-bench soak failed")

	// Every figure is there.
	for _, re := range []string{
		`(?m)^operations: \d+ attempts, \d+ grants \(`,
		// The chaos loop injects every kind once first.
		`(?m)^faults injected: [1-9]\d* \(.*\bbreak\b`,
		`(?m)^faults injected: [1-9]\d* \(.*\bclient-kill\b`,
		`(?m)^faults injected: [1-9]\d* \(.*\bclient-stop \d+`,
		`(?m)^faults injected: [1-9]\d* \(.*\bdaemon-kill \d+`,
		`(?m)^faults injected: [1-9]\d* \(.*\bstate-full\b`,
		`(?m)^faults injected: [1-9]\d* \(.*\bstate-ro\b`,
		`(?m)^daemon restarts: [1-9]\d*, slowest \S+; failed start attempts \(retried\): \d+$`,
		`(?m)^failed attempts by errno: `,
		`(?m)^wait \(blocking interfaces, attempt to grant\): p50 \S+ p99 \S+ max \S+ \([1-9]\d* grants\)`,
		`(?m)^  d0 pid \d+, \d+ samples over .*: RSS [\d.]+ -> [\d.]+ MiB \(slope [-+][\d.]+ MiB/min\), fds \d+ -> \d+ \(slope [-+][\d.]+/min\)`,
		`(?m)^files in STATE/locks at the end: \d+`,
		`(?m)still running 10s after that \(stuck\): 0$`,
		`(?m)^attempts without an outcome: \d+ of clients SIGKILLed by the chaos loop, 0 of others`,
		`(?m)^violations: 0$`,
	} {
		assert.Regexp(t, regexp.MustCompile(re), out)
	}

	// Nothing left: no mount (FUSE or the state tmpfs) and no process
	// (daemon or client: their arguments name paths under tmp), and the
	// soak removed its temporary directory.
	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], tmp) {
			t.Errorf("left mounted: %s", line)
		}
	}
	assert.Empty(t, processesMentioning(t, tmp), "processes left running")
	left, err := os.ReadDir(tmp)
	require.NoError(t, err)
	for _, d := range left {
		t.Errorf("left in TMPDIR: %s", d.Name())
	}
}

// processesMentioning returns the command lines of the processes whose
// arguments contain s.
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var out []string
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		out = append(out, d.Name()+": "+strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " "))
	}
	return out
}
