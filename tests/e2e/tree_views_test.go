package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// Every lock directory has the views of the root: M/team/.try/x is
// M/.try/team/x, and so on for .shared, .flock and .timeout/SECS, so that a
// process that sees only M/team (a container with it bind-mounted) can
// try, share and time out too. The locks are the same, whichever path
// takes them; the lock files show their directory's attributes; a view
// cannot be made, removed or changed, and views have no views.
func TestTreeViewsInEveryDirectory(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	mkdirs(t, 0o750, d.Path("team"), d.Path("team/app"))

	h := shellHold(t, e, d.Path("team/app/x"), ">")
	for _, p := range []string{"team/.try/app/x", "team/app/.try/x", ".try/team/app/x"} {
		assert.Equal(t, "EAGAIN", openOnce(t, e, d.Path(p), "w", true), "exclusive try of %s", p)
		assert.Equal(t, "EAGAIN", openOnce(t, e, d.Path(p), "r", true), "shared try of %s", p)
	}
	assert.Equal(t, "EAGAIN", openOnce(t, e, d.Path("team/app/.timeout/0.2/x"), "w", false), "timeout")
	requireAttr(t, d.Path("team/app/.try/x"), lockFileWant(dirWant(0o750, 0, 0)))
	shellRelease(t, h)
	waitFree(t, e, d.Path("team/app/x"))

	// .shared of a directory takes the shared lock of the same name.
	s := shellHold(t, e, d.Path("team/app/.shared/y"), "<")
	assert.Equal(t, "EAGAIN", openOnce(t, e, d.Path(".try/team/app/y"), "w", true), "exclusive over shared")
	assert.Equal(t, "granted", openOnce(t, e, d.Path("team/.try/app/y"), "r", true), "shared next to shared")
	shellRelease(t, s)

	// flock(1) through a directory's .flock: the same lock as the tree's.
	f := shellHold(t, e, d.Path("team/app/z"), ">")
	code, _, errOut := runAs(t, treeUser{"root", 0, 0}, "flock", "-n", d.Path("team/app/.flock/z"), "true")
	assert.Equal(t, 1, code, "flock -n through team/app/.flock while held: %s", errOut)
	shellRelease(t, f)
	harness.Eventually(t, patience, func() (bool, string) {
		code, _, errOut := runAs(t, treeUser{"root", 0, 0}, "flock", "-n", d.Path("team/app/.flock/z"), "true")
		return code == 0, "flock -n once released: " + errOut
	})

	// A view is no lock directory.
	for _, p := range []string{"team/.try/new", "team/app/.shared/new"} {
		assert.Error(t, os.Mkdir(d.Path(p), 0o755), "mkdir %s", p)
	}
	assert.Error(t, os.Remove(d.Path("team/.try")), "rmdir team/.try")
	assert.Error(t, os.Chmod(d.Path("team/.try"), 0o777), "chmod team/.try")
	for _, p := range []string{"team/.try/.try/x", "team/.try/app/.shared/x", ".try/team/.try/x"} {
		_, err := os.Stat(d.Path(p))
		assert.Error(t, err, "views have no views: %s", p)
	}
	// The directory lists its names, not its views.
	assert.NotContains(t, dirEntries(t, d.Path("team")), ".try")
}

// A lock directory made or removed through this daemon shows under every
// view at once, not only after the attribute timeout: the entries the
// kernel cached under the views (a lock file before mkdir, a directory
// before rmdir) are dropped.
func TestTreeMkdirShowsInViewsAtOnce(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{Args: []string{"--attr-timeout", "1h"}})
	mkdirs(t, 0o755, d.Path("team"))
	views := []string{".try/team/app", "team/.try/app", ".timeout/1/team/app", "team/.shared/app"}
	for _, v := range views {
		st, err := os.Stat(d.Path(v))
		require.NoError(t, err, v)
		require.True(t, st.Mode().IsRegular(), "%s: a lock file before mkdir", v)
	}
	require.NoError(t, os.Mkdir(d.Path("team/app"), 0o755))
	for _, v := range views {
		st, err := os.Stat(d.Path(v))
		require.NoError(t, err, v)
		assert.True(t, st.IsDir(), "%s: a directory right after mkdir", v)
		assert.Equal(t, "granted", openOnce(t, e, filepath.Join(d.Path(v), "x"), "w", true), "a lock in %s", v)
		// Every view's x is team/app/x: its lease goes at the RELEASE that
		// follows the close(2), and until then the next view's try would get
		// EAGAIN and the rmdir below ENOTEMPTY.
		waitHolders(t, d.Path("team/app/x"), 0)
	}
	require.NoError(t, os.Remove(d.Path("team/app")))
	for _, v := range views {
		st, err := os.Stat(d.Path(v))
		require.NoError(t, err, v)
		assert.True(t, st.Mode().IsRegular(), "%s: a lock file right after rmdir", v)
	}
}
