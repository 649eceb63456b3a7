package docker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// etcdserverBinary returns a static tests/internal/etcdserver (a
// single-node etcd on etcd's embed package): $LOCKFS_ETCDSERVER, or one
// built from the module into tmp with CGO_ENABLED=0.
func etcdserverBinary(ctx context.Context, root, tmp string) (string, error) {
	if p := os.Getenv("LOCKFS_ETCDSERVER"); p != "" {
		if err := requireStatic(p); err != nil {
			return "", fmt.Errorf("image: LOCKFS_ETCDSERVER: %w", err)
		}
		return p, nil
	}
	out := tmp + "/etcdserver"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./tests/internal/etcdserver")
	cmd.Dir = root
	var goflags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "-msan" && f != "-asan" {
			goflags = append(goflags, f)
		}
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS="+strings.Join(goflags, " "))
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: go build ./tests/internal/etcdserver: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return out, requireStatic(out)
}

// newNetwork creates a labelled bridge network, removed when t ends (after
// the containers on it, which are created later and so removed first).
func newNetwork(t testing.TB, role string) string {
	t.Helper()
	name := resourceName(t, role)
	dockerT(t, append(append([]string{"network", "create", "--driver", "bridge"}, labels(t)...), name)...)
	t.Cleanup(func() {
		if r := dockerRun(context.Background(), "network", "rm", name); r.err != nil {
			t.Errorf("cleanup: %v", r.err)
		}
	})
	return name
}

// startOnNetwork runs image detached on network, reachable there as role
// (like startContainer, which uses no network).
func startOnNetwork(t *testing.T, image, network, role string, flags []string, cmd ...string) *container {
	t.Helper()
	return &container{t: t, name: runContainer(t, image, role, onNet(network, role), flags, cmd...)}
}

// onNet is the network arguments that put a container on net as role.
func onNet(net, role string) []string {
	return []string{"--network", net, "--network-alias", role}
}

// timedHold starts a shell in c that opens path on fd 9 for writing, then
// writes to fd 9 every 0.1 s. Its state file gets "waiting", then
// "held UPTIME" at the grant and "lost UPTIME" when a write fails (UPTIME
// from /proc/uptime: one kernel, so one clock for every container).
func (c *container) timedHold(id, path string) *holder {
	c.t.Helper()
	h := &holder{c: c, id: id}
	inner := fmt.Sprintf(`echo $$ >%[1]s; echo waiting >%[2]s; exec 9>%[3]s; read up _ </proc/uptime; echo "held $up" >>%[2]s; `+
		`while echo x >&9; do sleep 0.1 9>&-; done; read up _ </proc/uptime; echo "lost $up" >>%[2]s`,
		h.file("pid"), h.file("st"), path)
	outer := fmt.Sprintf("rm -f /tmp/h-%s.*; sh -c '%s' 2>%s; echo \"exit $?\" >>%s", id, inner, h.file("err"), h.file("st"))
	dockerT(c.t, "exec", "-d", c.name, "sh", "-c", outer)
	h.waitState("waiting", "held", "lost", "exit")
	return h
}

// at returns the UPTIME of the holder's state line starting with what.
func (h *holder) at(what string) float64 {
	h.c.t.Helper()
	st, _ := h.state()
	for _, line := range strings.Split(st, "\n") {
		if up, ok := strings.CutPrefix(line, what+" "); ok {
			v, err := strconv.ParseFloat(up, 64)
			require.NoError(h.c.t, err, "holder %s state %q", h.id, st)
			return v
		}
	}
	h.c.t.Fatalf("holder %s has no %q line: %q", h.id, what, st)
	return 0
}

// hostUptime reads the kernel uptime, the clock of the holders' state files.
func hostUptime(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/uptime")
	require.NoError(t, err)
	v, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	require.NoError(t, err)
	return v
}

// TestEtcdEngine runs three containers on one Docker network: etcd, and two
// lockfs daemons with --engine etcd against it. Clients in the two daemon
// containers exclude each other; disconnecting the holder's container from
// the network frees the name for the other after the session TTL, and the
// cut-off holder sees EIO on its descriptor no later than the other side
// acquires.
func TestEtcdEngine(t *testing.T) {
	image := setup(t)
	// The TTL bounds how long the disconnect phase waits, and must also
	// outlast a stall of the whole machine: with a 2 s TTL, a loaded
	// 2-core run once let both daemons' sessions expire at the same
	// moment (etcd itself did not answer), which freed the held name.
	const ttl = 6 * time.Second
	net := newNetwork(t, "net")
	etcd := startOnNetwork(t, image, net, "etcd", nil,
		"etcdserver", "-listen-client", "http://0.0.0.0:2379", "-advertise-client", "http://etcd:2379",
		"-listen-peer", "http://127.0.0.1:2380", "-data-dir", "/tmp/etcd")
	waitFor(t, 60*time.Second, "etcd ready", func() error {
		r := dockerRun(context.Background(), "logs", etcd.name)
		if strings.Contains(r.stdout, "ready ") {
			return nil
		}
		if ok, state := etcd.running(); !ok {
			t.Fatalf("etcd container is not running (%s): %s%s", state, r.stdout, r.stderr)
		}
		return fmt.Errorf("not ready: %s%s", r.stdout, r.stderr)
	})
	mount := []string{"lockfs", "mount", "--engine", "etcd", "--etcd-endpoints", "http://etcd:2379",
		"--etcd-ttl", ttl.String(), "--etcd-op-timeout", "5s", "/mnt/locks"}
	a := startOnNetwork(t, image, net, "a", daemonFlags, mount...)
	b := startOnNetwork(t, image, net, "b", daemonFlags, mount...)
	a.waitMounted("/mnt/locks")
	b.waitMounted("/mnt/locks")

	t.Log("clients in the two daemon containers exclude each other")
	h := a.hold("x1", ">", "/mnt/locks/x")
	h.waitState("held")
	require.False(t, b.try(">", "/mnt/locks/.try/x"), "exclusive lock granted in two containers")
	require.False(t, b.try("<", "/mnt/locks/.try/x"), "shared lock granted over an exclusive one elsewhere")
	w := b.hold("x2", ">", "/mnt/locks/x")
	w.requireState("waiting")
	h.kill()
	w.waitState("held")
	require.False(t, a.try(">", "/mnt/locks/.try/x"), "A granted what B holds")
	r1 := a.hold("s1", "<", "/mnt/locks/.shared/s")
	r1.waitState("held")
	require.True(t, b.try("<", "/mnt/locks/.try/s"), "shared lock refused next to a shared one elsewhere")
	require.False(t, b.try(">", "/mnt/locks/.try/s"), "exclusive granted over a shared one elsewhere")
	r1.kill()
	w.kill()

	t.Log("network disconnect of the holder's container")
	ha := a.timedHold("p1", "/mnt/locks/p")
	ha.waitState("held")
	wb := b.timedHold("p2", "/mnt/locks/p")
	wb.requireState("waiting")
	cut := hostUptime(t)
	dockerT(t, "network", "disconnect", net, a.name)
	wb.waitState("held")
	ha.waitState("lost")
	granted, lost := wb.at("held"), ha.at("lost")
	t.Logf("after the disconnect (TTL %v): B acquired at +%.2fs, A's holder saw EIO at +%.2fs",
		ttl, granted-cut, lost-cut)
	// A counts its lease from when it sent the last renewal, etcd from when
	// it received it (and expires leases in 0.5 s sweeps), so A's deadline
	// comes first. A's holder notices on its next write: up to 0.1 s plus
	// starting `sleep` later, which a loaded machine can stretch; 1 s of
	// slack covers that without hiding a real inversion (one keepalive
	// interval or more).
	const slack = 1.0
	require.LessOrEqual(t, lost, granted+slack, "cut-off holder saw EIO %.2fs after the other side acquired", lost-granted)
	require.GreaterOrEqual(t, granted-cut, 0.0, "acquired before the disconnect")
	// B holds the name; the cut-off holder's write failed with EIO.
	require.False(t, b.try(">", "/mnt/locks/.try/p"), "B's holder lost the name")
	wb.requireState("held")
	_, errOut := ha.state()
	require.Contains(t, errOut, "Input/output error", "the cut-off holder's failed write (EIO)")
}
