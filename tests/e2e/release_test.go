package e2e

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// The lock is released when the last descriptor of the open file
// description closes, not at the first close (FLUSH) of a duplicate.
func TestDupKeepsLock(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	t.Run("bash", func(t *testing.T) {
		t.Parallel()
		path := d.Path("dup-bash")
		p := e.Bash(t, `exec 9>"$P" || exit 1; exec 8>&9; exec 9>&-; echo dup-only; read _; exec 8>&-; echo closed; read _`, "P="+path)
		p.WaitLine("dup-only", patience)
		requireHeld(t, e, path)
		p.Send("go")
		p.WaitLine("closed", patience)
		waitFree(t, e, path)
	})

	t.Run("go", func(t *testing.T) {
		t.Parallel()
		path := d.Path("dup-go")
		p := e.GoClient(t, "-dup", path) // dups, closes the original
		harness.Granted(t, p, patience)
		require.Equal(t, "ok", harness.Command(t, p, "fstat"))
		requireHeld(t, e, path)
		harness.Release(t, p)
		waitFree(t, e, path)
	})
}

// A child that inherits fd 9 keeps the lock after the parent closes it
// (like flock(1)); the lock goes when the child dies.
func TestForkKeepsLock(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})

	for _, shell := range []string{"bash", "busybox"} {
		t.Run(shell, func(t *testing.T) {
			t.Parallel()
			path := d.Path("fork-" + shell)
			script := `exec 9>"$P" || exit 1; sleep 1000 </dev/null >/dev/null 2>&1 & echo child $!; exec 9>&-; echo parent-closed; read _; exit 0`
			var p *harness.Proc
			if shell == "bash" {
				p = e.Bash(t, script, "P="+path)
			} else {
				p = e.Sh(t, script, "P="+path)
			}
			f := p.WaitLine("child", patience)
			child, err := strconv.Atoi(f[0])
			require.NoError(t, err)
			p.WaitLine("parent-closed", patience)
			requireHeld(t, e, path)
			// The parent exits: the background child still holds.
			p.CloseStdin()
			require.Equal(t, 0, p.Wait(patience))
			requireHeld(t, e, path)

			require.NoError(t, unix.Kill(child, unix.SIGKILL))
			waitFree(t, e, path)
		})
	}
}

// A close releases the lock, exclusive (exec 9>) or shared
// (exec 9<M/.shared/NAME), asynchronously, so poll.
func TestCloseReleases(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("c")
	p := e.Bash(t, `exec 9>"$P" && exec 9>&- && echo closed && exec 9<"$S" && exec 9>&- && echo closed2`,
		"P="+path, "S="+sharedPath(path))
	p.WaitLine("closed2", patience)
	require.Equal(t, 0, p.Wait(patience))
	waitFree(t, e, path)
}
