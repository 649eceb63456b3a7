package e2e

import (
	"testing"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Lock directories on the etcd engine, on one etcd server shared by the
// subtests (each on a prefix of its own, two daemons per prefix: two hosts
// on one cluster): chmod and chown take effect through the other daemon
// (within the default attribute timeout) and after a restart; rmdir fails
// with ENOTEMPTY while a name below is held or waited on through either
// daemon; and a nested name excludes across the two daemons (counter
// torture with flock(1) and exec 9>).
func TestTreeEtcd(t *testing.T) {
	e := setup(t)
	s := startEtcd(t, e)
	// pair starts two daemons on s under a prefix of t's own.
	pair := func(t *testing.T, level string) (a, b *harness.Daemon) {
		c := etcdDaemonConfig(s, "/lockfs-e2e/"+sanitizeName(t.Name())+"/", 0)
		c.LogLevel = level
		return e.StartDaemon(t, c), e.StartDaemon(t, c)
	}
	t.Run("attrs", func(t *testing.T) {
		t.Parallel()
		c := etcdDaemonConfig(s, "/lockfs-e2e/"+sanitizeName(t.Name())+"/", 0)
		treeAttrsShared(t, e, func(t *testing.T) *harness.Daemon { return e.StartDaemon(t, c) })
	})
	t.Run("rmdir", func(t *testing.T) {
		t.Parallel()
		a, b := pair(t, "")
		treeRmdirAcross(t, e, a, b)
	})
	t.Run("nested-counter", func(t *testing.T) {
		t.Parallel()
		a, b := pair(t, "info")
		treeNestedCounter(t, e, a, b)
	})
}
