package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

var metricsAddrRe = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

// metricsURL is the /metrics URL of daemon d, started with
// --metrics-addr, from its log.
func metricsURL(t *testing.T, d *harness.Daemon) string {
	t.Helper()
	m := metricsAddrRe.FindStringSubmatch(d.WaitLog(patience, `msg="serving metrics"`))
	require.Len(t, m, 2)
	return "http://" + m[1] + "/metrics"
}

// inodesMetric scrapes the lockfs_inodes gauge at url.
func inodesMetric(t *testing.T, url string) int {
	t.Helper()
	for l := range strings.SplitSeq(scrapeMetrics(t, url), "\n") {
		if v, ok := strings.CutPrefix(l, "lockfs_inodes "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return int(f)
		}
	}
	t.Fatal("no lockfs_inodes in the metrics")
	return 0
}

// scrapeMetrics fetches the metrics page.
func scrapeMetrics(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: patience}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// hasMetricSample reports whether the page has a sample line "NAME VALUE" (name
// including labels).
func hasMetricSample(page, sample string) bool {
	for l := range strings.SplitSeq(page, "\n") {
		if l == sample {
			return true
		}
	}
	return false
}

// --metrics-addr serves Prometheus metrics: gauges of held locks and
// waiters, counters of acquisitions and losses, wait and hold histograms,
// heartbeat failures.
func TestMetrics(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--metrics-addr", "127.0.0.1:0", "--lock-delay", "100ms"}})
	url := metricsURL(t, d)

	h := e.Hold(t, d.Path("x"), "w")
	w := e.Waiter(t, d.Path("x"), "w")
	harness.Eventually(t, patience, func() (bool, string) {
		p := scrapeMetrics(t, url)
		return hasMetricSample(p, "lockfs_locks_held 1") && hasMetricSample(p, `lockfs_lock_waiters{via="open"} 1`), p
	})
	require.NoError(t, unix.Unlink(d.Path("x")))
	harness.Granted(t, w, patience)
	harness.Release(t, w)
	harness.Release(t, h)
	waitFree(t, e, d.Path("x"))

	var page string
	harness.Eventually(t, patience, func() (bool, string) {
		// The last probe's release follows its close by a little.
		page = scrapeMetrics(t, url)
		return hasMetricSample(page, "lockfs_locks_held 0"), page
	})
	for _, name := range []string{
		"lockfs_locks_held", "lockfs_lock_holders", "lockfs_lock_waiters", "lockfs_locks_lost",
		"lockfs_acquisitions_total", "lockfs_releases_total", "lockfs_losses_total",
		"lockfs_wait_seconds", "lockfs_hold_seconds", "lockfs_heartbeat_failures_total",
	} {
		assert.Contains(t, page, "# TYPE "+name+" ", "metric %s", name)
	}
	assert.True(t, hasMetricSample(page, `lockfs_losses_total{mode="exclusive"} 1`), "one loss (the break):\n%s", page)
	assert.True(t, hasMetricSample(page, "lockfs_heartbeat_failures_total 0"))
	assert.Regexp(t, `(?m)^lockfs_wait_seconds_count\{mode="exclusive"\} [1-9]`, page)
	assert.Regexp(t, `(?m)^lockfs_hold_seconds_count\{mode="exclusive"\} [1-9]`, page)
	assert.Regexp(t, `(?m)^lockfs_acquisitions_total\{mode="exclusive"\} [1-9]`, page)
}
