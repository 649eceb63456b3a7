package e2e

import (
	"testing"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// pyReadLockTwoFds takes an fcntl read lock (lockf LOCK_SH) through a
// read-only descriptor of a name, then opens a second read-only
// descriptor of the same name and closes it, and closes the first on
// command. Each step is announced on stdout and waits for a line on stdin.
const pyReadLockTwoFds = `
import fcntl, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
fcntl.lockf(fd, fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.readline()
fd2 = os.open(path, os.O_RDONLY)
os.close(fd2)
print("closed-other", flush=True)
sys.stdin.readline()
os.close(fd)
print("closed-locking", flush=True)
sys.stdin.readline()
`

// A read lock taken through a read-only descriptor survives the process
// closing another descriptor of the same name (docs/usage.md, "Lock
// calls": lockfs does not release a process's fcntl locks on the close
// of a read-only descriptor, unlike POSIX on a local disk) and ends when
// its own descriptor is last closed.
func TestReadLockSurvivesOtherReadOnlyClose(t *testing.T) {
	e := setup(t)
	d := e.StartDaemon(t, harness.DaemonConfig{})
	path := d.Path("rlock")
	p := harness.Start(t, harness.ProcOptions{Name: "python read lock " + path, Path: e.Python,
		Args: []string{"-u", "-c", pyReadLockTwoFds, path}})
	p.WaitLine("locked", patience)
	requireHeld(t, e, path)

	p.Send("")
	p.WaitLine("closed-other", patience)
	requireHeld(t, e, path)

	p.Send("")
	p.WaitLine("closed-locking", patience)
	waitFree(t, e, path)
	p.CloseStdin()
	p.Wait(patience)
}
