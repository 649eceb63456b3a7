package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/internal/mountinfo"
)

// cmdTimeout bounds one docker CLI call.
const cmdTimeout = 2 * time.Minute

// daemonFlags are what lockfs needs to mount FUSE inside a container.
// (--privileged is not used: runc refuses it where the host's capability
// bounding set is reduced, as on the CI machines.)
var daemonFlags = []string{"--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined"}

// result is the outcome of a command.
type result struct {
	stdout, stderr string
	code           int   // exit code; -1 if it did not run or was killed
	err            error // nil iff code == 0
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// runCmd runs a command, killed after cmdTimeout, and collects its output.
func runCmd(ctx context.Context, name string, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		r.code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
		}
		r.err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(r.stderr))
	}
	return r
}

// dockerRun runs the docker CLI.
func dockerRun(ctx context.Context, args ...string) result { return runCmd(ctx, "docker", args...) }

// dockerCtx runs the docker CLI and returns its stdout; the error includes
// stderr.
func dockerCtx(ctx context.Context, args ...string) (string, error) {
	r := dockerRun(ctx, args...)
	return r.stdout, r.err
}

// dockerT runs the docker CLI and fails t on error.
func dockerT(t testing.TB, args ...string) string {
	t.Helper()
	out, err := dockerCtx(context.Background(), args...)
	require.NoError(t, err)
	return strings.TrimSpace(out)
}

// labels returns the --label flags every resource of t carries.
func labels(t testing.TB) []string {
	return []string{
		"--label", labelTest + "=1",
		"--label", labelRun + "=" + runID,
		"--label", labelPid + "=" + strconv.Itoa(os.Getpid()),
		"--label", "lockfs.test.name=" + t.Name(),
	}
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

func sanitize(s string) string { return unsafeName.ReplaceAllString(s, "_") }

// resourceName returns a docker name unique to this run, test and role.
func resourceName(t testing.TB, role string) string {
	return sanitize(fmt.Sprintf("lockfs-test-%s-%s-%s", runID, t.Name(), role))
}

// newVolume creates a labelled named volume, removed when t ends. Create it
// before the containers that use it.
func newVolume(t *testing.T, role string) string {
	t.Helper()
	name := resourceName(t, role)
	dockerT(t, append(append([]string{"volume", "create"}, labels(t)...), name)...)
	t.Cleanup(func() {
		if _, err := dockerCtx(context.Background(), "volume", "rm", "-f", name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

// container is a running test container.
type container struct {
	t    *testing.T
	name string
}

// startContainer runs image detached with the test's labels and no network,
// and removes the container (after logging its output if t failed) when t
// ends.
func startContainer(t *testing.T, image, role string, flags []string, cmd ...string) *container {
	t.Helper()
	return &container{t: t, name: runContainer(t, image, role, []string{"--network", "none"}, flags, cmd...)}
}

// runContainer runs image detached with the test's labels, the network
// arguments netArgs and flags, and returns its name. The container is
// removed (after logging its output if t failed) when t ends.
func runContainer(t testing.TB, image, role string, netArgs, flags []string, cmd ...string) string {
	t.Helper()
	name := resourceName(t, role)
	args := append(append([]string{"run", "-d", "--name", name}, netArgs...), labels(t)...)
	args = append(args, flags...)
	args = append(args, image)
	args = append(args, cmd...)
	r := dockerRun(context.Background(), args...)
	t.Cleanup(func() {
		if t.Failed() {
			if out := dockerRun(context.Background(), "logs", "--tail", "80", name); out.err == nil {
				t.Logf("logs of %s:\n%s%s", name, out.stdout, out.stderr)
			}
		}
		if r := dockerRun(context.Background(), "rm", "-f", "-v", name); r.err != nil && !strings.Contains(r.stderr, "No such container") {
			t.Errorf("cleanup: %v", r.err)
		}
	})
	require.NoError(t, r.err, "start %s", role)
	return name
}

// startDaemon runs `lockfs mount --state-dir /var/lib/lockfs MOUNTPOINT` in a
// container with FUSE access and waits until the mount is up inside it.
func startDaemon(t *testing.T, image, role string, flags []string, mountpoint string) *container {
	t.Helper()
	flags = append(append([]string{}, daemonFlags...), flags...)
	c := startContainer(t, image, role, flags, "lockfs", "mount", "--state-dir", "/var/lib/lockfs", mountpoint)
	c.waitMounted(mountpoint)
	return c
}

// startClient runs an idle container for docker exec clients.
func startClient(t *testing.T, image, role string, flags []string) *container {
	t.Helper()
	return startContainer(t, image, role, flags, "sleep", "1000000")
}

// sh runs a busybox sh script in c and returns the result (a non-zero exit is
// not an error of sh itself).
func (c *container) sh(script string) result {
	return dockerRun(context.Background(), "exec", c.name, "sh", "-c", script)
}

// mustSh runs script in c and fails the test unless it exits 0.
func (c *container) mustSh(script string) string {
	c.t.Helper()
	r := c.sh(script)
	require.NoError(c.t, r.err, "in %s: %s", c.name, script)
	return strings.TrimSpace(r.stdout)
}

// running reports whether c is running, with its state for messages.
func (c *container) running() (bool, string) {
	out, err := dockerCtx(context.Background(), "inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}} {{.State.Error}}", c.name)
	if err != nil {
		return false, err.Error()
	}
	out = strings.TrimSpace(out)
	return strings.HasPrefix(out, "running"), out
}

// waitMounted waits until c sees a fuse.lockfs mount at point, failing at
// once if c stops.
func (c *container) waitMounted(point string) {
	c.t.Helper()
	waitFor(c.t, 60*time.Second, "lockfs mounted at "+point+" in "+c.name, func() error {
		r := c.sh("cat /proc/self/mountinfo")
		if r.err != nil {
			if ok, state := c.running(); !ok {
				c.t.Fatalf("%s is not running (%s)", c.name, state)
			}
			return r.err
		}
		ms, err := mountinfo.Parse([]byte(r.stdout))
		if err != nil {
			return err
		}
		if n := len(lockfsMountsAt(ms, point)); n != 1 {
			return fmt.Errorf("%d fuse.lockfs mounts at %s", n, point)
		}
		return nil
	})
}

// lockfsMounts returns c's fuse.lockfs mounts.
func (c *container) lockfsMounts() []mountinfo.Mount {
	c.t.Helper()
	ms, err := mountinfo.Parse([]byte(c.mustSh("cat /proc/self/mountinfo")))
	require.NoError(c.t, err, "mountinfo of %s", c.name)
	return mountinfo.Lockfs(ms)
}

// try opens path without waiting (path should be M/.try/NAME) for writing
// (redir ">") or reading ("<") and closes it. It returns true if the open
// succeeded and false on EAGAIN; anything else fails the test.
func (c *container) try(redir, path string) bool {
	c.t.Helper()
	r := c.sh(fmt.Sprintf("{ :; } 9%s%s", redir, path))
	if r.code == 0 {
		return true
	}
	require.Contains(c.t, r.stderr, "Resource temporarily unavailable", "try %s%s in %s: %v", redir, path, c.name, r)
	return false
}

// tryErr opens path without waiting and returns the open's error output ("" on
// success), for checks of how a broken mount fails.
func (c *container) tryErr(redir, path string) string {
	r := c.sh(fmt.Sprintf("{ :; } 9%s%s", redir, path))
	if r.code == 0 {
		return ""
	}
	return strings.TrimSpace(r.stderr) + fmt.Sprintf(" (exit %d)", r.code)
}

// holder is a shell in a container that opened a lock file and keeps it open.
type holder struct {
	c  *container
	id string // names its files /tmp/h-ID.{pid,st,err}
}

// hold starts a shell in c that writes "waiting" to its state file, opens path
// on fd 9 with redir (">" exclusive, "<" shared: path M/.shared/NAME, since a
// read-only open of M/NAME takes nothing), writes "held UPTIME" (the
// kernel uptime at the grant) and keeps the lock. An exclusive holder writes to fd 9 every 0.1 s and writes "lost" when
// that fails. When the shell ends, "exit N" is appended.
func (c *container) hold(id, redir, path string) *holder {
	c.t.Helper()
	h := &holder{c: c, id: id}
	loop := "exec sleep 1000000"
	if redir != "<" {
		loop = "while echo x >&9; do sleep 0.1 9>&-; done; echo lost >" + h.file("st")
	}
	inner := fmt.Sprintf("echo $$ >%s; echo waiting >%s; exec 9%s%s; read up _ </proc/uptime; echo \"held $up\" >%s; %s",
		h.file("pid"), h.file("st"), redir, path, h.file("st"), loop)
	outer := fmt.Sprintf("rm -f /tmp/h-%s.*; sh -c '%s' 2>%s; echo \"exit $?\" >>%s", id, inner, h.file("err"), h.file("st"))
	dockerT(c.t, "exec", "-d", c.name, "sh", "-c", outer)
	h.waitState("waiting", "held", "lost", "exit")
	return h
}

func (h *holder) file(ext string) string { return fmt.Sprintf("/tmp/h-%s.%s", h.id, ext) }

// state returns the holder's state file ("waiting", "held", "lost",
// "exit N", possibly several lines) and its stderr.
func (h *holder) state() (string, string) {
	r := h.c.sh(fmt.Sprintf("cat %s 2>/dev/null; echo ---; cat %s 2>/dev/null", h.file("st"), h.file("err")))
	st, errOut, _ := strings.Cut(r.stdout, "---\n")
	return strings.TrimSpace(st), strings.TrimSpace(errOut)
}

// waitState waits until a line of the holder's state starts with one of
// want and returns the whole state. It fails at once if the shell ended
// without reaching want.
func (h *holder) waitState(want ...string) string {
	h.c.t.Helper()
	var st string
	waitFor(h.c.t, 30*time.Second, fmt.Sprintf("holder %s in %s in state %v", h.id, h.c.name, want), func() error {
		var errOut string
		st, errOut = h.state()
		for _, line := range strings.Split(st, "\n") {
			for _, w := range want {
				if strings.HasPrefix(line, w) {
					return nil
				}
			}
		}
		if strings.Contains(st, "exit ") {
			h.c.t.Fatalf("holder %s in %s ended before reaching %v: state %q, stderr %q", h.id, h.c.name, want, st, errOut)
		}
		return fmt.Errorf("state %q, stderr %q", st, errOut)
	})
	return st
}

// requireState asserts the holder's current last state line starts with want.
func (h *holder) requireState(want string) {
	h.c.t.Helper()
	st, errOut := h.state()
	lines := strings.Split(st, "\n")
	require.True(h.c.t, strings.HasPrefix(lines[len(lines)-1], want),
		"holder %s in %s: want %q, state %q, stderr %q", h.id, h.c.name, want, st, errOut)
}

// heldAt returns the kernel uptime at which the holder got its lock.
func (h *holder) heldAt() float64 {
	h.c.t.Helper()
	st, _ := h.state()
	for _, line := range strings.Split(st, "\n") {
		if up, ok := strings.CutPrefix(line, "held "); ok {
			v, err := strconv.ParseFloat(up, 64)
			require.NoError(h.c.t, err, "holder %s state %q", h.id, st)
			return v
		}
	}
	h.c.t.Fatalf("holder %s never held: %q", h.id, st)
	return 0
}

// kill sends SIGTERM to the holder's shell (which closes its descriptor, or
// interrupts its wait) and waits until it has ended.
func (h *holder) kill() {
	h.c.t.Helper()
	h.c.mustSh(fmt.Sprintf("kill $(cat %s)", h.file("pid")))
	h.waitState("exit")
}

// tortureScript returns a shell script that runs workers background loops of
// iters increments of the number in counter, each under the exclusive lock
// lock, and prints "fails=N" per worker (N failed opens).
func tortureScript(lock, counter string, workers, iters int) string {
	return fmt.Sprintf(`w() {
  i=0; f=0
  while [ $i -lt %[3]d ]; do
    { read n <%[2]s; echo $((n+1)) >%[2]s; } 9>%[1]s || f=$((f+1))
    i=$((i+1))
  done
  echo "fails=$f"
}
k=0; while [ $k -lt %[4]d ]; do w & k=$((k+1)); done; wait
`, lock, counter, iters, workers)
}

// checkTorture asserts that the outputs of torture scripts hold one
// "fails=0" line per worker.
func checkTorture(t *testing.T, workers int, outs ...string) {
	t.Helper()
	var reports []string
	for _, line := range strings.Split(strings.Join(outs, "\n"), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "fails=") {
			reports = append(reports, line)
		}
	}
	require.Len(t, reports, workers, "worker reports: %q", outs)
	for _, r := range reports {
		require.Equal(t, "fails=0", r, "a worker failed to open the lock: %q", outs)
	}
}

// waitFor polls cond until it returns nil or timeout passes, then fails t with
// the last error.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := 20 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(delay)
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// containerPids returns the host pids of c's processes.
func containerPids(t *testing.T, c *container) []int {
	t.Helper()
	out := dockerT(t, "top", c.name, "-eo", "pid")
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// processState returns the state letter of host pid ("" if gone).
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}
