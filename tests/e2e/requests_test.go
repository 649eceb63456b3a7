package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// rxLine is a request line of go-fuse's debug trace (lockfs mount
// --debug-fuse): "rx ID: OPCODE nNODE ...".
var rxLine = regexp.MustCompile(`\brx \d+: ([A-Z_0-9]+) ([^\n]*)`)

// fuseRequests returns the requests in trace: opcode -> count, and the
// argument text of each GETXATTR.
func fuseRequests(trace string) (map[string]int, []string) {
	counts := map[string]int{}
	var xattrs []string
	for _, m := range rxLine.FindAllStringSubmatch(trace, -1) {
		counts[m[1]]++
		if m[1] == "GETXATTR" {
			xattrs = append(xattrs, m[2])
		}
	}
	return counts, xattrs
}

// TestRequestsPerOpen counts the FUSE requests that reach the daemon for a
// warm loop of lock opens and closes: each costs exactly one OPEN and one
// RELEASE, with at most an occasional LOOKUP or GETATTR when the kernel's
// entry or attribute timeout expires (none for the cached entries lockfs
// hands out today). The shell's form (O_WRONLY|O_CREAT|O_TRUNC, bash's
// "exec 9>") adds the kernel's GETXATTR "security.capability", which it
// sends before every truncation while the mount has extended attributes
// (see docs/benchmarks.md: no mount option removes it for lock files),
// answered at once; never a SETATTR (atomic O_TRUNC) or a FLUSH.
func TestRequestsPerOpen(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{LogLevel: "warn", Args: []string{"--debug-fuse"}})
	const n = 200

	goLoop := func(flags int) func(t *testing.T, path string) int {
		return func(t *testing.T, path string) int { return openCloseLoop(t, path, flags, n) }
	}
	bashLoop := func(t *testing.T, path string) int {
		p := e.Bash(t, fmt.Sprintf(`for ((i=0;i<%d;i++)); do exec 9>"$P" || exit 1; exec 9>&-; done; echo done`, n), "P="+path)
		p.WaitLine("done", patience)
		require.Equal(t, 0, p.Wait(patience))
		return 0
	}
	cases := []struct {
		name string
		// loop runs n opens and returns how many it retried after EINTR
		// (see openCloseLoop); bash retries by itself, uncounted.
		loop          func(t *testing.T, path string) int
		countsRetries bool
		xattrs        bool // one GETXATTR security.capability per open
	}{
		{"write open", goLoop(unix.O_WRONLY), true, false},
		{"write open with O_TRUNC", goLoop(unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC), true, true},
		{"bash exec 9>", bashLoop, false, true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := d.Path(fmt.Sprintf("requests-%d", i))
			// Warm: the first open looks the name up.
			start := len(d.Log())
			warm := 3 + openCloseLoop(t, path, unix.O_WRONLY, 3)
			harness.Eventually(t, patience, func() (bool, string) {
				counts, _ := fuseRequests(d.Log()[start:])
				return counts["RELEASE"] >= 3 && counts["OPEN"] >= warm, "the warm-up's requests"
			})
			before := len(d.Log())
			t0 := time.Now()
			retries := c.loop(t, path)
			secs := int(time.Since(t0)/time.Second) + 1
			var counts map[string]int
			var xattrs []string
			// RELEASE is asynchronous: wait for the last one.
			harness.Eventually(t, patience, func() (bool, string) {
				counts, xattrs = fuseRequests(d.Log()[before:])
				return counts["RELEASE"] >= n, fmt.Sprintf("every RELEASE (%v so far)", counts)
			})
			t.Logf("%d opens in %ds: %v", n, secs, counts)
			if !c.countsRetries {
				assert.GreaterOrEqual(t, counts["OPEN"], n, "OPEN per open")
				assert.LessOrEqual(t, counts["OPEN"], n+n/10, "OPEN per open (interrupted ones retried)")
			} else {
				assert.Equal(t, n+retries, counts["OPEN"], "OPEN per open (%d interrupted and retried)", retries)
			}
			assert.Equal(t, n, counts["RELEASE"], "RELEASE per open")
			// An expired entry or attribute timeout costs one request
			// now and then, never one per open.
			assert.LessOrEqual(t, counts["LOOKUP"]+counts["GETATTR"], 2*secs, "LOOKUP and GETATTR")
			if c.xattrs {
				assert.LessOrEqual(t, counts["GETXATTR"], counts["OPEN"], "GETXATTR")
				for _, x := range xattrs {
					assert.Contains(t, x, `"security.capability"`)
				}
			} else {
				assert.Zero(t, counts["GETXATTR"], "GETXATTR")
			}
			var other []string
			for op := range counts {
				switch op {
				// INTERRUPT comes from a signal to the opener (the Go
				// runtime's preemption), not from lockfs: the kernel
				// sends it, and sends it again while the daemon has
				// not read the interrupted request yet (go-fuse answers
				// EAGAIN then), so one signal may show as many.
				case "OPEN", "RELEASE", "LOOKUP", "GETATTR", "GETXATTR", "INTERRUPT":
				default:
					other = append(other, op)
				}
			}
			slices.Sort(other)
			assert.Empty(t, other, "other requests: %s", strings.Join(other, " "))
		})
	}
}

// openCloseLoop opens path with flags and closes it count times, and returns
// how many opens it retried: the Go runtime's preemption signal (SIGURG) can
// land while open(2) waits for the daemon's answer, which the kernel turns
// into an INTERRUPT and the open into EINTR; each such open sent one OPEN
// more.
func openCloseLoop(t *testing.T, path string, flags, count int) (retries int) {
	t.Helper()
	for range count {
		for {
			fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o666)
			if err == unix.EINTR {
				retries++
				continue
			}
			require.NoError(t, err)
			require.NoError(t, unix.Close(fd))
			break
		}
	}
	return retries
}
