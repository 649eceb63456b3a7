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

// counterWorker increments the counter file $C $N times, each time under
// `exec 9>$M/c`. POSIX sh, so bash and busybox sh run the same script.
const counterWorker = `i=0
while [ "$i" -lt "$N" ]; do
	exec 9>"$M/c" || exit 1
	read n <"$C"
	echo $((n + 1)) >"$C"
	exec 9>&-
	i=$((i + 1))
done
echo done`

// Counter torture: 8 parallel shell workers x 200 increments guarded by
// exec 9>M/c end exactly at 1600, on one daemon and split across two
// daemons sharing a state dir.
func TestCounterTorture(t *testing.T) {
	e := setup(t)
	const workers, increments = 8, 200
	for _, c := range []struct {
		shell   string
		daemons int
	}{{"bash", 1}, {"bash", 2}, {"busybox", 1}, {"busybox", 2}} {
		t.Run(c.shell+"/"+strconv.Itoa(c.daemons)+"daemons", func(t *testing.T) {
			t.Parallel()
			sd := t.TempDir()
			var ds []*harness.Daemon
			for range c.daemons {
				ds = append(ds, e.StartDaemon(t, harness.DaemonConfig{StateDir: sd, LogLevel: "info"}))
			}
			counter := filepath.Join(t.TempDir(), "counter")
			require.NoError(t, os.WriteFile(counter, []byte("0\n"), 0o644))

			start := time.Now()
			var ps []*harness.Proc
			for i := range workers {
				env := []string{"M=" + ds[i%len(ds)].Mountpoint, "C=" + counter, "N=" + strconv.Itoa(increments)}
				if c.shell == "bash" {
					ps = append(ps, e.Bash(t, counterWorker, env...))
				} else {
					ps = append(ps, e.Sh(t, counterWorker, env...))
				}
			}
			for _, p := range ps {
				p.WaitLine("done", 3*time.Minute)
				require.Equal(t, 0, p.Wait(patience), "worker: %s", p.Stderr())
			}
			got, err := os.ReadFile(counter)
			require.NoError(t, err)
			t.Logf("%d x %d increments in %v", workers, increments, time.Since(start))
			assert.Equal(t, strconv.Itoa(workers*increments), strings.TrimSpace(string(got)))
		})
	}
}
