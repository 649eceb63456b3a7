package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// statSpellings is a Python script: it stats DIR/.timeout/0.<PREFIX><i>
// for i in [0, N) (every one a distinct spelling of a timeout, so a node of
// its own) and prints "ok N" or "error ERRNO I" at the first failure.
const statSpellings = `import errno, os, sys
d, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    try:
        os.stat(os.path.join(d, ".timeout", "0.%s%d" % (prefix, i)))
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, e.errno), i)
        sys.exit(0)
print("ok", n)
`

// Directory nodes cannot exhaust the daemon: every spelling of
// .timeout/SECS (and every mirrored lock directory) is a node, counted
// against the caller's --max-names-per-user (ENOLCK past it), and the
// sweep asks the kernel to forget the idle ones, which gives the
// allowance and the memory back.
func TestDirNodesLimitedAndGivenBack(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--metrics-addr", "127.0.0.1:0",
		"--name-sweep", "200ms", "--max-names-per-user", "50"}})
	usersCanReach(t, e, d)
	url := metricsURL(t, d)
	inodes := func() int { return inodesMetric(t, url) }
	spell := func(u treeUser, prefix string, n int) string {
		t.Helper()
		code, out, errOut := runAs(t, u, e.Python, "-c", statSpellings, d.Mountpoint, prefix, strconv.Itoa(n))
		require.Equal(t, 0, code, errOut)
		return strings.TrimSpace(out)
	}

	// The idle nodes of one pass are forgotten within a few sweeps; a
	// user past the limit is refused at once.
	assert.Equal(t, "error ENOLCK 50", spell(bob, "1", 60), "bob's 51st spelling")
	d.WaitLog(patience, `msg="per-user limit reached: refusing"`, "uid=65534", "limit=names")
	assert.Equal(t, "ok 50", spell(alice, "4", 50), "another user has her own allowance")
	harness.Eventually(t, patience, func() (bool, string) {
		got := spell(bob, "2", 40)
		return got == "ok 40", fmt.Sprintf("bob's allowance not given back by the sweep: %s", got)
	})

	// Root is not limited; 5,000 spellings leave no nodes behind.
	require.Equal(t, "ok 5000", spell(treeUser{"root", 0, 0}, "3", 5000))
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := inodes()
		return got <= 10, "inodes kept: " + strconv.Itoa(got)
	})
}
