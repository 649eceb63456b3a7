package harness

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// GoClient starts the Go client (see tests/e2e/lockclient) with args.
func (e *Env) GoClient(t testing.TB, args ...string) *Proc {
	t.Helper()
	return Start(t, ProcOptions{Name: "lockclient " + last(args), Path: e.Client, Args: args})
}

// PyClient starts the Python client (pyclient.py) with args; it fails t
// when python3 is missing.
func (e *Env) PyClient(t testing.TB, args ...string) *Proc {
	t.Helper()
	if e.Python == "" {
		t.Fatal("python3 not found: install it (apt-get install python3)")
	}
	return Start(t, ProcOptions{Name: "pyclient " + last(args), Path: e.Python, Args: append([]string{"-u", e.PyScript}, args...)})
}

// Bash runs script with bash -c; env entries (KEY=VALUE) are added.
func (e *Env) Bash(t testing.TB, script string, env ...string) *Proc {
	t.Helper()
	return Start(t, ProcOptions{Name: "bash", Path: e.BashPath, Args: []string{"-c", script}, Env: env})
}

// Sh runs script with busybox sh -c; it fails t when busybox is missing.
func (e *Env) Sh(t testing.TB, script string, env ...string) *Proc {
	t.Helper()
	if e.Busybox == "" {
		t.Fatal("busybox not found: install it (apt-get install busybox-static)")
	}
	return Start(t, ProcOptions{Name: "busybox sh", Path: e.Busybox, Args: []string{"sh", "-c", script}, Env: env})
}

// Hold starts a Go client that opens path with mode (w, a, rw or r) and
// waits until the open is granted. The lock is held until the test sends
// "close" or closes its stdin.
func (e *Env) Hold(t testing.TB, path, mode string) *Proc {
	t.Helper()
	p := e.GoClient(t, "-mode", mode, path)
	p.WaitLine("granted", Patience)
	return p
}

// Waiter starts a Go client that opens path with mode and waits until it
// is blocked in open(2) and has had time to queue (see Settle).
func (e *Env) Waiter(t testing.TB, path, mode string) *Proc {
	t.Helper()
	p := e.GoClient(t, "-mode", mode, path)
	p.WaitBlockedInOpen(Patience)
	return p
}

// Granted waits for the client's "granted" line and returns the
// CLOCK_MONOTONIC time of the grant.
func Granted(t testing.TB, p *Proc, timeout time.Duration) int64 {
	t.Helper()
	f := p.WaitLine("granted", timeout)
	return atoi64(t, f[0])
}

// Release asks a Go or Python client to close its lock descriptor and
// returns the CLOCK_MONOTONIC time taken right before close(2).
func Release(t testing.TB, p *Proc) int64 {
	t.Helper()
	p.Send("close")
	f := p.WaitLine("closed", Patience)
	return atoi64(t, f[0])
}

// OpenError waits for the client's "error ERRNO ..." line after its open
// and returns the errno name.
func OpenError(t testing.TB, p *Proc, timeout time.Duration) string {
	t.Helper()
	f := p.WaitLine("error", timeout)
	return f[0]
}

// Command sends a descriptor command (write, read, fsync, fstat) to a
// client and returns "ok" or the errno name.
func Command(t testing.TB, p *Proc, cmd string) string {
	t.Helper()
	p.Send(cmd)
	f := strings.Fields(p.NextLine(Patience))
	switch {
	case len(f) >= 1 && f[0] == "ok":
		return "ok"
	case len(f) >= 2 && f[0] == "error":
		return f[1]
	}
	t.Fatalf("%s: unexpected answer %q to %q", p.Name, strings.Join(f, " "), cmd)
	return ""
}

func atoi64(t testing.TB, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("harness: bad number %q: %v", s, err)
	}
	return n
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}
