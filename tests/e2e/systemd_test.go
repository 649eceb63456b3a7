package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/tests/e2e/harness"
)

// notifySocket is a stand-in for systemd's notification socket: it
// collects the datagrams that arrive on a unixgram socket.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	s := &notifySocket{path: path, msgs: make(chan string, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return // closed by the cleanup
			}
			select {
			case s.msgs <- string(buf[:n]):
			default: // the test stopped reading
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return s
}

// next returns the next message whose first line is one of firsts,
// skipping others, and fails t after timeout.
func (s *notifySocket) next(t *testing.T, timeout time.Duration, firsts ...string) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-s.msgs:
			first, _, _ := strings.Cut(m, "\n")
			for _, f := range firsts {
				if first == f {
					return m
				}
			}
		case <-deadline:
			t.Fatalf("no %s on the notify socket within %v", strings.Join(firsts, " or "), timeout)
		}
	}
}

// lockfs mount as a systemd Type=notify service with WatchdogSec=: READY=1
// (with a status naming the mountpoint) once the mount serves, WATCHDOG=1
// again and again at half of WATCHDOG_USEC while it is healthy, and
// STOPPING=1 on SIGTERM, after which it exits 0.
func TestMountSystemdNotify(t *testing.T) {
	e := setup(t)
	sock := listenNotify(t)
	const watchdog = 200 * time.Millisecond
	d := e.SpawnDaemon(t, harness.DaemonConfig{
		LogLevel: "info",
		Env:      []string{"NOTIFY_SOCKET=" + sock.path, "WATCHDOG_USEC=200000"},
	})

	ready := sock.next(t, patience, "READY=1", "WATCHDOG=1", "STOPPING=1")
	require.True(t, strings.HasPrefix(ready, "READY=1\n"), "first message %q, want READY=1 first", ready)
	assert.Contains(t, ready, "STATUS=serving "+d.Mountpoint)
	assert.True(t, d.Mounted(), "READY=1 before the mount shows")
	d.WaitReady(patience) // and msg=mounted (the log is collected asynchronously)
	t.Logf("READY: %q", ready)

	// Pings keep coming, and locks work meanwhile. The pings are 100ms
	// apart; a generous bound per ping keeps a loaded machine from
	// tripping the test.
	const pings = 5
	start := time.Now()
	for i := range pings {
		sock.next(t, patience, "WATCHDOG=1")
		if i == 1 {
			assert.Equal(t, "granted", probe(t, e, d.Path("x"), "w"))
		}
	}
	t.Logf("%d watchdog pings in %v (timeout %v)", pings, time.Since(start), watchdog)
	assert.NotContains(t, d.Log(), "ERROR")

	d.Signal(unix.SIGTERM)
	stopping := sock.next(t, patience, "STOPPING=1")
	t.Logf("STOPPING: %q", stopping)
	assert.Contains(t, stopping, "STATUS=shutting down")
	assert.Equal(t, 0, d.Wait(patience))
	assert.False(t, d.Mounted())
	if strings.Contains(d.Log(), "health check failed") {
		t.Logf("some health checks missed their deadline on this machine; log:\n%s", d.Log())
	}
}

// When the backend stops answering (here: its state directory's locks/
// is removed, so no lock file can be created), the health check fails,
// the daemon logs a warning and stops pinging the watchdog, so that
// systemd restarts it.
func TestMountSystemdWatchdogStopsWhenBackendFails(t *testing.T) {
	e := setup(t)
	sock := listenNotify(t)
	d := e.SpawnDaemon(t, harness.DaemonConfig{
		LogLevel: "info",
		Env:      []string{"NOTIFY_SOCKET=" + sock.path, "WATCHDOG_USEC=200000"},
	})
	sock.next(t, patience, "READY=1")
	d.WaitReady(patience)
	sock.next(t, patience, "WATCHDOG=1")

	require.NoError(t, os.RemoveAll(filepath.Join(d.StateDir, "locks")))
	// A loaded machine may also miss the check's deadline ("no answer
	// within"), before or besides the failure the test causes; wait for
	// the warning that names the engine's error.
	line := d.WaitLog(patience, "level=WARN", "health check failed", "engine: probe lock")
	t.Logf("daemon: %s", line)
	// The failure is permanent: after the warning, and the pings already
	// queued, none may come for many watchdog intervals.
	for len(sock.msgs) > 0 {
		<-sock.msgs
	}
	quiet := time.After(time.Second) // five ping intervals
	for done := false; !done; {
		select {
		case m := <-sock.msgs:
			assert.NotEqual(t, "WATCHDOG=1", m, "ping while the backend fails")
		case <-quiet:
			done = true
		}
	}
	d.Signal(unix.SIGTERM)
	sock.next(t, patience, "STOPPING=1")
	d.Wait(patience)
}
