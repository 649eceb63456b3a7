package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/internal/sdnotify"
	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

func openTestEngine(t *testing.T, dir string) (*lockengine.Queue, lockengine.Backend) {
	t.Helper()
	b, err := dirlock.Open(dir, dirlock.Options{})
	require.NoError(t, err)
	q := lockengine.NewQueue(b, lockengine.QueueOptions{})
	t.Cleanup(func() { _ = q.Close() })
	return q, b
}

// The engine half of the health check passes on a working engine, leaves
// nothing visible behind, passes when the probe name is busy elsewhere
// (that is an answer too), and fails once the engine is closed.
func TestHealthCheckEngine(t *testing.T) {
	dir := t.TempDir()
	q, b := openTestEngine(t, dir)
	h := &healthCheck{mnt: t.TempDir(), eng: q, backend: b}
	ctx := context.Background()

	l, err := q.Acquire(ctx, "user", lockengine.Exclusive)
	require.NoError(t, err)
	require.NoError(t, h.checkEngine(ctx))
	require.NoError(t, l.Release())
	for _, info := range q.Snapshot() {
		assert.NotEqual(t, healthProbeName, info.Name, "the probe shows in the engine")
	}

	other, err := dirlock.Open(dir, dirlock.Options{})
	require.NoError(t, err)
	defer other.Close()
	hold, err := other.TryLock(ctx, healthProbeName, lockengine.Exclusive, nil)
	require.NoError(t, err)
	assert.NoError(t, h.checkEngine(ctx), "probe name held by another daemon")
	require.NoError(t, hold.Unlock())

	require.NoError(t, q.Close())
	assert.Error(t, h.checkEngine(ctx), "closed engine")
}

// The FUSE half fails on a directory that is not a FUSE mount (the mount
// went away under the daemon) and on a missing one.
func TestHealthCheckFUSE(t *testing.T) {
	q, b := openTestEngine(t, t.TempDir())
	h := &healthCheck{mnt: t.TempDir(), eng: q, backend: b}
	err := h.check(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no longer a FUSE mount")

	h.mnt = filepath.Join(h.mnt, "missing")
	assert.Error(t, h.checkFUSE())
}

// Failures are logged at once, then at most once per interval, and the
// recovery once.
func TestHealthLogRateLimit(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	l := &healthLog{log: slog.New(slog.NewTextHandler(&buf, nil)), every: time.Minute,
		now: func() time.Time { return now }}
	errSick := context.DeadlineExceeded
	count := func(s string) int { return strings.Count(buf.String(), s) }

	l.report(nil)
	assert.Empty(t, buf.String(), "healthy rounds log nothing")
	for range 10 { // 10 failures within the minute: one warning
		l.report(errSick)
		now = now.Add(5 * time.Second)
	}
	assert.Equal(t, 1, count("level=WARN"), buf.String())
	now = now.Add(15 * time.Second) // a minute after the first warning
	l.report(errSick)
	assert.Equal(t, 2, count("level=WARN"), buf.String())
	assert.Contains(t, buf.String(), "failed_rounds=10", "the second warning counts the rounds since the first")
	l.report(nil)
	l.report(nil)
	assert.Equal(t, 1, count("pings resumed"), buf.String())
	l.report(errSick) // a new episode warns at once
	assert.Equal(t, 3, count("level=WARN"), buf.String())
}

// With NOTIFY_SOCKET set, READY=1 and STOPPING=1 arrive with a status;
// without WATCHDOG_USEC no watchdog runs.
func TestNotifySystemdReadyStopping(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer ln.Close()
	t.Setenv(sdnotify.SocketEnv, sock)
	t.Setenv(sdnotify.WatchdogUsecEnv, "")
	recv := func() string {
		require.NoError(t, ln.SetReadDeadline(time.Now().Add(10*time.Second)))
		buf := make([]byte, 1024)
		n, err := ln.Read(buf)
		require.NoError(t, err)
		return string(buf[:n])
	}
	var logBuf bytes.Buffer
	n := notifySystemd(slog.New(slog.NewTextHandler(&logBuf, nil)), "/mnt/locks", "dir", nil)
	assert.Equal(t, "READY=1\nSTATUS=serving /mnt/locks (engine dir)", recv())
	assert.Nil(t, n.stopWatchdog)
	n.stopping("shutting down on terminated")
	n.stopping("again") // only the first call sends
	assert.Equal(t, "STOPPING=1\nSTATUS=shutting down on terminated", recv())
	assert.NotContains(t, logBuf.String(), "level=WARN")
}

// Without NOTIFY_SOCKET nothing is sent or started.
func TestNotifySystemdOff(t *testing.T) {
	t.Setenv(sdnotify.SocketEnv, "")
	t.Setenv(sdnotify.WatchdogUsecEnv, "200000")
	n := notifySystemd(slog.New(slog.DiscardHandler), "/mnt/locks", "dir", nil)
	assert.Nil(t, n.stopWatchdog)
	n.stopping("x")
}
