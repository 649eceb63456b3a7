// Package sdnotify speaks systemd's service notification protocol
// (sd_notify(3)) for services of Type=notify: readiness, shutdown, status
// text and watchdog keep-alives.
//
// The protocol is one datagram per message, sent to the unix datagram
// socket named by $NOTIFY_SOCKET: newline-separated VARIABLE=VALUE
// assignments such as "READY=1\nSTATUS=serving". A socket name that starts
// with '@' is in the abstract namespace (the '@' stands for the leading NUL
// byte; Go's net package does that translation). Without $NOTIFY_SOCKET the
// process was not started by systemd as a notify service, and every send is
// a no-op.
//
// The watchdog half: when the unit sets WatchdogSec=, systemd passes the
// timeout in $WATCHDOG_USEC (and the pid meant to ping in $WATCHDOG_PID)
// and kills the service unless "WATCHDOG=1" arrives at least that often.
// [Watchdog] sends it only after a health check passes, so that a service
// that still runs but no longer serves gets restarted.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Messages understood by systemd. Several may be sent in one datagram,
// joined by newlines.
const (
	// Ready tells systemd that start-up is finished: a Type=notify unit
	// becomes active and units ordered after it start.
	Ready = "READY=1"
	// Stopping tells systemd that the service is shutting down.
	Stopping = "STOPPING=1"
	// WatchdogPing resets the watchdog timer of a unit with WatchdogSec=.
	WatchdogPing = "WATCHDOG=1"
)

// Status returns the STATUS= assignment that shows text in systemctl
// status. Newlines in text would start a new assignment: they become
// spaces.
func Status(text string) string {
	return "STATUS=" + strings.ReplaceAll(text, "\n", " ")
}

// SocketEnv is the environment variable that names the notification
// socket.
const SocketEnv = "NOTIFY_SOCKET"

// sendTimeout bounds one send: a datagram to a peer whose receive queue is
// full would otherwise wait until it drains.
const sendTimeout = time.Second

// Notify sends state (one or more newline-separated assignments) to the
// socket named by $NOTIFY_SOCKET. It returns nil without doing anything
// when $NOTIFY_SOCKET is unset or empty.
func Notify(state string) error {
	return Send(os.Getenv(SocketEnv), state)
}

// Send sends state to the notification socket socket: an absolute path,
// or '@' followed by the name of an abstract socket. An empty socket is a
// no-op and returns nil.
func Send(socket, state string) error {
	if socket == "" {
		return nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		return fmt.Errorf("sdnotify: %s=%q: want an absolute path or @abstract name", SocketEnv, socket)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send %q: %w", firstLine(state), err)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// Watchdog environment variables set by systemd for units with WatchdogSec=.
const (
	WatchdogUsecEnv = "WATCHDOG_USEC"
	WatchdogPIDEnv  = "WATCHDOG_PID"
)

// WatchdogTimeout returns the watchdog timeout that systemd expects this
// process to honour, from $WATCHDOG_USEC, or 0 when there is none: the
// variable is unset, or $WATCHDOG_PID is set to another process's pid (the
// ping is then that process's job). Systemd recommends pinging at half the
// timeout. Malformed values are an error.
func WatchdogTimeout() (time.Duration, error) {
	return watchdogTimeout(os.Getenv(WatchdogUsecEnv), os.Getenv(WatchdogPIDEnv), os.Getpid())
}

func watchdogTimeout(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil || p <= 0 {
			return 0, fmt.Errorf("sdnotify: %s=%q: not a pid", WatchdogPIDEnv, pid)
		}
		if p != self {
			return 0, nil
		}
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil {
		return 0, fmt.Errorf("sdnotify: %s=%q: %w", WatchdogUsecEnv, usec, err)
	}
	if n == 0 || n > uint64(time.Duration(1<<63-1)/time.Microsecond) {
		return 0, fmt.Errorf("sdnotify: %s=%q: %w", WatchdogUsecEnv, usec, errOutOfRange)
	}
	return time.Duration(n) * time.Microsecond, nil
}

var errOutOfRange = errors.New("out of range")
