package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/internal/mountinfo"
	"github.com/lockfs/lockfs/internal/sdnotify"
	"github.com/lockfs/lockfs/lockengine"
)

// systemd support of 'lockfs mount' (Type=notify units, see
// contrib/systemd/lockfs.service and docs/systemd.md): READY=1 once the
// mount serves, STOPPING=1 when shutdown starts, and WATCHDOG=1 pings while
// a health check passes. Without $NOTIFY_SOCKET all of it is off.

// systemdNotifier is the systemd side of one mount.
type systemdNotifier struct {
	log    *slog.Logger
	socket string // $NOTIFY_SOCKET; "" when not run by systemd

	once         sync.Once
	stopWatchdog context.CancelFunc // nil without a watchdog
	watchdogDone chan struct{}
}

// notifySystemd tells systemd that the mount at mnt serves (READY=1 and a
// STATUS= line) and, when the unit has WatchdogSec=, starts pinging the
// watchdog at half its timeout while health passes. Failures are logged,
// never fatal: the mount serves either way.
func notifySystemd(logger *slog.Logger, mnt, engine string, health *healthCheck) *systemdNotifier {
	n := &systemdNotifier{log: logger, socket: os.Getenv(sdnotify.SocketEnv)}
	if n.socket == "" {
		return n
	}
	n.send(sdnotify.Ready + "\n" + sdnotify.Status(fmt.Sprintf("serving %s (engine %s)", mnt, engine)))
	timeout, err := sdnotify.WatchdogTimeout()
	if err != nil {
		logger.Warn("systemd watchdog disabled", "err", err)
		return n
	}
	if timeout == 0 {
		return n
	}
	w := &sdnotify.Watchdog{
		Interval: timeout / 2,
		Timeout:  timeout / 4,
		Check:    health.check,
		Notify:   func(state string) error { return sdnotify.Send(n.socket, state) },
		Report:   (&healthLog{log: logger, every: time.Minute, now: time.Now}).report,
	}
	logger.Info("systemd watchdog enabled", "timeout", timeout, "ping_every", w.Interval, "check_deadline", w.Timeout)
	ctx, cancel := context.WithCancel(context.Background())
	n.stopWatchdog, n.watchdogDone = cancel, make(chan struct{})
	go func() {
		defer close(n.watchdogDone)
		w.Run(ctx)
	}()
	return n
}

// stopping tells systemd that shutdown has started (STOPPING=1, with why
// as the status) and stops the watchdog, waiting for a health check in
// progress at most until its deadline, so that none looks at the mount
// while it is unmounted. Only the first call does anything.
func (n *systemdNotifier) stopping(why string) {
	n.once.Do(func() {
		if n.socket == "" {
			return
		}
		n.send(sdnotify.Stopping + "\n" + sdnotify.Status(why))
		if n.stopWatchdog != nil {
			n.stopWatchdog()
			<-n.watchdogDone
		}
	})
}

func (n *systemdNotifier) send(state string) {
	if err := sdnotify.Send(n.socket, state); err != nil {
		n.log.Warn("notifying systemd failed", "err", err)
	}
}

// healthProbeName is the lock name that the health check takes through the
// backend. It is the name of a reserved directory of the mount root, which
// fsnode refuses as a lock name: no user can open a lock of that name, so
// the probe never contends with a user's lock, and the Queue never asks the
// backend for it (which keeps the Backend contract of one call per name at
// a time: the watchdog runs one check at a time).
const healthProbeName = fsnode.TryDir

// healthCheck is what the watchdog checks before each ping: that the mount
// at mnt still serves. It passes only when
//
//   - the FUSE loop answers: statfs(2) of the mountpoint, which the kernel
//     always forwards to the daemon (it is never cached), returns, and
//     reports a FUSE filesystem (not the directory under a mount that went
//     away);
//   - the engine answers: Engine.Snapshot, which never blocks on a lock,
//     takes the Queue's lock and every name's, so a deadlock in the
//     engine shows;
//   - the backend answers: one TryLock (shared) and Unlock of
//     healthProbeName goes to the state directory (flock, a write) or to
//     etcd (a transaction), so a hung or failing state directory or an
//     unreachable etcd shows. Another daemon's probe of the same backend
//     at the same moment may make it would-block: that is an answer too.
//
// The checks run in the watchdog's goroutine for them, which may stay
// blocked in statfs on a hung mount or in a system call on a hung state
// directory; the watchdog then skips its pings until the call returns and
// never starts a second check meanwhile (see sdnotify.Watchdog), so
// systemd restarts the daemon once the watchdog timeout passes.
type healthCheck struct {
	mnt     string
	eng     lockengine.Engine
	backend lockengine.Backend
}

// check implements the check of a sdnotify.Watchdog.
func (h *healthCheck) check(ctx context.Context) error {
	if err := h.checkFUSE(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fuse answered, engine not checked: %w", err)
	}
	return h.checkEngine(ctx)
}

// checkFUSE: statfs of the mountpoint answers with a FUSE filesystem.
func (h *healthCheck) checkFUSE() error {
	var st unix.Statfs_t
	err := unix.Statfs(h.mnt, &st)
	for err == unix.EINTR {
		err = unix.Statfs(h.mnt, &st)
	}
	if err != nil {
		return fmt.Errorf("fuse: statfs %s: %w", h.mnt, err)
	}
	if st.Type != mountinfo.FUSESuperMagic {
		return fmt.Errorf("fuse: %s is no longer a FUSE mount (filesystem type %#x)", h.mnt, st.Type)
	}
	return nil
}

// checkEngine: the engine and its backend answer.
func (h *healthCheck) checkEngine(ctx context.Context) error {
	_ = h.eng.Snapshot()
	hold, err := h.backend.TryLock(ctx, healthProbeName, lockengine.Shared, func(error) {})
	switch {
	case errors.Is(err, lockengine.ErrWouldBlock):
		return nil
	case err != nil:
		return fmt.Errorf("engine: probe lock: %w", err)
	}
	if err := hold.Unlock(); err != nil {
		return fmt.Errorf("engine: probe unlock: %w", err)
	}
	return nil
}

// healthLog logs the watchdog's reports, rate-limited: the first failure
// at once, then at most one warning per every while failures go on (with
// the number of rounds since the last warning), and one line when pings
// resume.
type healthLog struct {
	log   *slog.Logger
	every time.Duration
	now   func() time.Time

	failing  bool
	lastWarn time.Time
	failed   int // rounds failed since lastWarn
}

// report implements the Report of a sdnotify.Watchdog; it is called from
// one goroutine.
func (l *healthLog) report(err error) {
	if err == nil {
		if l.failing {
			l.log.Info("health check passes again; systemd watchdog pings resumed")
			l.failing, l.failed = false, 0
		}
		return
	}
	l.failed++
	now := l.now()
	if l.failing && now.Sub(l.lastWarn) < l.every {
		return
	}
	l.log.Warn("health check failed; skipping the systemd watchdog ping (systemd restarts lockfs if this goes on)",
		"err", err, "failed_rounds", l.failed)
	l.failing, l.lastWarn, l.failed = true, now, 0
}
