package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// listen returns a unixgram socket bound to name (a path, or @abstract).
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receive returns the next datagram on c, failing t after a generous
// deadline (the datagram is sent before receive is called, so it is
// normally already queued).
func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyPathSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	c := listen(t, sock)
	t.Setenv(SocketEnv, sock)
	msgs := []string{Ready + "\n" + Status("serving /mnt/locks"), WatchdogPing, Stopping}
	for _, m := range msgs {
		if err := Notify(m); err != nil {
			t.Fatalf("Notify(%q): %v", m, err)
		}
	}
	for _, want := range msgs {
		if got := receive(t, c); got != want {
			t.Errorf("received %q, want %q", got, want)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := "@lockfs-sdnotify-test-" + strconv.Itoa(os.Getpid())
	c := listen(t, name)
	t.Setenv(SocketEnv, name)
	if err := Notify(Ready); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if got := receive(t, c); got != Ready {
		t.Errorf("received %q, want %q", got, Ready)
	}
	// The abstract socket must not have become a file named "@...".
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s: %v, want not-exist", name, err)
	}
}

func TestNotifyWithoutSocketIsNoop(t *testing.T) {
	t.Setenv(SocketEnv, "")
	os.Unsetenv(SocketEnv)
	if err := Notify(Ready); err != nil {
		t.Errorf("Notify without %s: %v, want nil", SocketEnv, err)
	}
	if err := Send("", Ready); err != nil {
		t.Errorf("Send to no socket: %v, want nil", err)
	}
}

func TestSendErrors(t *testing.T) {
	for _, sock := range []string{
		"relative/notify.sock",
		filepath.Join(t.TempDir(), "missing.sock"),
	} {
		if err := Send(sock, Ready); err == nil {
			t.Errorf("Send(%q): nil error", sock)
		}
	}
}

func TestStatusFlattensNewlines(t *testing.T) {
	if got, want := Status("a\nb"), "STATUS=a b"; got != want {
		t.Errorf("Status = %q, want %q", got, want)
	}
}

func TestWatchdogTimeout(t *testing.T) {
	const self = 4242
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"", "1", 0, false},
		{"200000", "", 200 * time.Millisecond, false},
		{"30000000", fmt.Sprint(self), 30 * time.Second, false},
		{"30000000", "1", 0, false}, // someone else's watchdog
		{"30000000", "x", 0, true},
		{"abc", "", 0, true},
		{"0", "", 0, true},
		{"-5", "", 0, true},
		{"99999999999999999999", "", 0, true},
	} {
		got, err := watchdogTimeout(tc.usec, tc.pid, self)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("watchdogTimeout(%q, %q) = %v, %v; want %v, error %v", tc.usec, tc.pid, got, err, tc.want, tc.err)
		}
	}
}

func TestWatchdogTimeoutFromEnv(t *testing.T) {
	t.Setenv(WatchdogUsecEnv, "1000000")
	t.Setenv(WatchdogPIDEnv, strconv.Itoa(os.Getpid()))
	if got, err := WatchdogTimeout(); got != time.Second || err != nil {
		t.Errorf("WatchdogTimeout() = %v, %v; want 1s", got, err)
	}
}
