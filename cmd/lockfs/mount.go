package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
	"github.com/lockfs/lockfs/lockengine"
)

// mountConfig is the parsed command line of 'lockfs mount'.
type mountConfig struct {
	mountpoint    string
	stateDir      string
	heartbeat     time.Duration
	takeoverAfter time.Duration
	logLevel      slog.Level
	readyFd       int // -1: none
	debugFUSE     bool
	backend       backendFlags // --engine and --etcd-*, see backend.go
	queue         queueFlags   // --lock-delay, --metrics-addr, see queueflags.go
	limits        limitFlags   // --max-*-per-user, --limit-root, --name-sweep, see limits.go
	tree          treeFlags    // --attr-timeout, --root-mode, --root-owner, see treeflags.go
	attrTimeout   time.Duration
	rootAttr      *lockengine.DirAttr
}

func newMountFlags(cfg *mountConfig, logLevel *string) *flag.FlagSet {
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.StringVar(&cfg.stateDir, "state-dir", "",
		"backing directory of the local lock engine (default "+defaultStateDirHelp()+
			"); created 0700 if missing; must be owned by the user lockfs runs as")
	fl.DurationVar(&cfg.heartbeat, "heartbeat", 10*time.Second, "heartbeat interval of held locks")
	fl.DurationVar(&cfg.takeoverAfter, "takeover-after", 0,
		"take a name from a holder whose heartbeat stopped this long ago; 0 = never (else >= 3x heartbeat)")
	fl.StringVar(logLevel, "log-level", "info", "log level: debug, info, warn or error (slog text on stderr)")
	fl.IntVar(&cfg.readyFd, "ready-fd", -1, "when mounted, write \"ready\\n\" to this file descriptor and close it")
	fl.BoolVar(&cfg.debugFUSE, "debug-fuse", false, "print every FUSE request and reply (go-fuse debug) on stderr")
	registerBackendFlags(fl, &cfg.backend)
	registerQueueFlags(fl, &cfg.queue)
	registerLimitFlags(fl, &cfg.limits)
	registerTreeFlags(fl, &cfg.tree)
	return fl
}

func mountUsage() string {
	var cfg mountConfig
	var lvl string
	fl := newMountFlags(&cfg, &lvl)
	var b strings.Builder
	b.WriteString(`Usage: lockfs mount [flags] MOUNTPOINT

Mounts lockfs on the existing directory MOUNTPOINT and serves it in the
foreground until SIGINT or SIGTERM, then unmounts (lazily if locks are still
open) and exits 0. The mount is ready when MOUNTPOINT shows in
/proc/self/mountinfo with type fuse.lockfs (the daemon also logs msg=mounted).
A stale lockfs mount left at MOUNTPOINT by a killed daemon is removed first.

  MOUNTPOINT/NAME                 a blocking write open waits for the
                                  exclusive lock NAME (exec 9>M/NAME)
  MOUNTPOINT/.shared/NAME         open waits for the shared lock
  MOUNTPOINT/.try/NAME            open fails with EAGAIN unless NAME is free
  MOUNTPOINT/.timeout/SECS/NAME   open waits at most SECS (2, 0.5, 500ms)
  MOUNTPOINT/.flock/NAME          open never locks
A read-only or O_NONBLOCK open of MOUNTPOINT/NAME takes nothing by itself;
flock(2), fcntl and lockf on any descriptor take, convert and release the
same locks (flock(1), setlock and chpst -l work unchanged). Read-only opens
of .try and .timeout take the shared lock. NAME may be a path (team/deploy)
in lock directories made with mkdir; taking a lock needs write permission on
its directory (chmod, chown; default_permissions). A holder reads its
fencing token from its descriptor (read -r tok <&9); ls -l, stat and
getfattr -d show holders without taking the lock; rm MOUNTPOINT/NAME breaks
it (root or a lone holder). See 'lockfs help status|run|break'.

Flags:
`)
	fl.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		fmt.Fprintf(&b, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" {
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	return b.String()
}

// parseMountArgs parses the flags and the MOUNTPOINT; flags may come before
// or after it.
func parseMountArgs(args []string) (mountConfig, error) {
	var cfg mountConfig
	var lvl string
	fl := newMountFlags(&cfg, &lvl)
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			return cfg, err
		}
		rest := fl.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...) // everything after "--" is positional
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch len(pos) {
	case 0:
		return cfg, usageErrorf("mount: missing MOUNTPOINT (see 'lockfs mount --help')")
	case 1:
		if pos[0] == "" {
			// filepath.Abs would make it the working directory.
			return cfg, usageErrorf("mount: empty MOUNTPOINT")
		}
		cfg.mountpoint = pos[0]
	default:
		return cfg, usageErrorf("mount: want one MOUNTPOINT, got %d arguments: %q", len(pos), pos)
	}
	if err := cfg.logLevel.UnmarshalText([]byte(lvl)); err != nil {
		return cfg, usageErrorf("mount: --log-level %q: want debug, info, warn or error", lvl)
	}
	if cfg.heartbeat <= 0 {
		return cfg, usageErrorf("mount: --heartbeat must be positive, got %v", cfg.heartbeat)
	}
	if cfg.takeoverAfter < 0 || (cfg.takeoverAfter > 0 && cfg.takeoverAfter < 3*cfg.heartbeat) {
		return cfg, usageErrorf("mount: --takeover-after must be 0 or at least 3x --heartbeat (%v), got %v",
			3*cfg.heartbeat, cfg.takeoverAfter)
	}
	if err := cfg.limits.check(); err != nil {
		return cfg, err
	}
	var err error
	if cfg.attrTimeout, cfg.rootAttr, err = cfg.tree.options(); err != nil {
		return cfg, err
	}
	if cfg.readyFd != -1 {
		if cfg.readyFd < 0 {
			return cfg, usageErrorf("mount: --ready-fd %d is not a file descriptor", cfg.readyFd)
		}
		if _, err := unix.FcntlInt(uintptr(cfg.readyFd), unix.F_GETFD, 0); err != nil {
			return cfg, usageErrorf("mount: --ready-fd %d: %w", cfg.readyFd, err)
		}
	}
	if cfg.stateDir == "" {
		dir, err := defaultStateDir()
		if err != nil {
			return cfg, usageErrorf("mount: %w; pass --state-dir", err)
		}
		cfg.stateDir = dir
	}
	return cfg, nil
}

// runMount implements 'lockfs mount'.
func runMount(args []string, stdout, stderr io.Writer) error {
	// One P unless the user says otherwise: a lock request is a few
	// microseconds of work, and with more Ps every request pays
	// cross-thread wake-ups (measured: 2.5x the cost of an open+close;
	// see lockfs-bench fs).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	cfg, err := parseMountArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, mountUsage())
		return nil
	}
	if err != nil {
		var ue usageError
		if !errors.As(err, &ue) {
			err = usageErrorf("mount: %w (see 'lockfs mount --help')", err)
		}
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	root := os.Geteuid() == 0
	// Every held name of the dir backend costs a descriptor: take all
	// the hard limit allows. The limits keep fdReserve of them for root
	// (see limitFlags.options).
	nofile := raiseNofile(logger)

	mnt, err := filepath.Abs(cfg.mountpoint)
	if err != nil {
		return usageErrorf("mount: %w", err)
	}
	mnt = filepath.Clean(mnt)
	if err := removeStaleMounts(mnt, root, logger); err != nil {
		return err
	}
	if err := checkMountpoint(mnt); err != nil {
		return err
	}

	allowOther := true
	if root {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			return fmt.Errorf("mount: /dev/fuse is not available (%w): load the fuse module (modprobe fuse), "+
				"or in a container pass --device /dev/fuse and CAP_SYS_ADMIN", err)
		}
	} else {
		if _, err := fusermountPath(); err != nil {
			return fmt.Errorf("mount: mounting as a non-root user needs fusermount3, which is not installed " +
				"(Debian/Ubuntu: apt-get install fuse3); or run lockfs mount as root")
		}
		if !userAllowOther() {
			allowOther = false
			logger.Warn("user_allow_other is not set in /etc/fuse.conf: mounting without allow_other, " +
				"only this user can use the mount")
		}
	}

	backend, err := openBackend(cfg, root, logger)
	if err != nil {
		return err
	}
	qs, err := startQueueSetup(cfg.queue, backend, logger)
	if err != nil {
		_ = backend.Close()
		return err
	}
	defer qs.stop()
	eng := lockengine.NewQueue(backend, qs.queueOptions)
	qs.setEngine(eng)

	// Catch signals before mounting so that none is lost in between.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	srv, err := fsnode.Mount(mnt, eng, fsnode.Options{
		Logger:      logger,
		AllowOther:  allowOther,
		DirectMount: root,
		DebugFUSE:   cfg.debugFUSE,
		DebugLog:    log.New(stderr, "fuse: ", log.Lmicroseconds),
		Limits:      cfg.limits.options(nofile),
		NameSweep:   cfg.limits.nameSweepOption(),
		AttrTimeout: cfg.attrTimeout,
		Root:        cfg.rootAttr,
	})
	if err != nil {
		_ = eng.Close()
		msg := strings.TrimSpace(err.Error())
		if !root {
			return fmt.Errorf("%s (non-root mounts go through fusermount3, which must be installed setuid root "+
				"with /dev/fuse accessible; see its message above)", msg)
		}
		return errors.New(msg)
	}
	if err := registerFSMetrics(qs, srv); err != nil {
		logger.Warn("filesystem metrics unavailable", "err", err)
	}
	where := slog.String("state_dir", cfg.stateDir)
	if cfg.backend.kind == "etcd" {
		where = slog.String("etcd_endpoints", cfg.backend.endpoints)
	}
	logger.Info("mounted", "mountpoint", mnt, "engine", cfg.backend.kind, where, "pid", os.Getpid(),
		"allow_other", allowOther)
	if cfg.readyFd >= 0 {
		signalReady(cfg.readyFd, logger)
	}
	sd := notifySystemd(logger, mnt, cfg.backend.kind, &healthCheck{mnt: mnt, eng: eng, backend: backend})

	served := make(chan struct{})
	go returnMemory(served, eng.ForgetIdle)
	go func() {
		srv.Wait()
		close(served)
	}()

	var runErr error
	select {
	case sig := <-sigs:
		logger.Info("shutting down", "signal", sig.String())
		sd.stopping("shutting down on " + sig.String())
		runErr = unmount(srv, mnt, root, logger)
	case <-served:
		logger.Info("unmounted from outside; shutting down", "mountpoint", mnt)
		sd.stopping("unmounted from outside; shutting down")
	}
	// Waiters still blocked in open fail with EIO, holders of a lazily
	// detached mount see EIO and, once this process exits, ENOTCONN.
	if err := eng.Close(); err != nil {
		logger.Error("closing the lock engine", "err", err)
	}
	if runErr == nil {
		logger.Info("stopped", "mountpoint", mnt)
	}
	return runErr
}

// checkMountpoint returns a usage error unless mnt is an existing directory.
func checkMountpoint(mnt string) error {
	fi, err := os.Stat(mnt)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return usageErrorf("mount: mountpoint %s does not exist", mnt)
	case err != nil:
		return fmt.Errorf("mount: mountpoint: %w", err)
	case !fi.IsDir():
		return usageErrorf("mount: mountpoint %s is not a directory", mnt)
	}
	return nil
}

// unmount unmounts srv, lazily (MNT_DETACH) when files are still open.
func unmount(srv *fsnode.Server, mnt string, root bool, logger *slog.Logger) error {
	err := srv.Unmount()
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EBUSY) {
		logger.Warn("unmount failed; detaching lazily", "mountpoint", mnt, "err", err)
	} else {
		logger.Info("locks still open; detaching lazily", "mountpoint", mnt)
	}
	if err := lazyUnmount(mnt, root); err != nil {
		logger.Error("lazy unmount failed", "mountpoint", mnt, "err", err)
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	return nil
}

// signalReady writes "ready\n" to fd and closes it.
func signalReady(fd int, logger *slog.Logger) {
	f := os.NewFile(uintptr(fd), "ready-fd")
	if _, err := f.WriteString("ready\n"); err != nil {
		logger.Warn("writing to --ready-fd failed", "fd", fd, "err", err)
	}
	if err := f.Close(); err != nil {
		logger.Warn("closing --ready-fd failed", "fd", fd, "err", err)
	}
}

// fusermountPath finds fusermount3 (or the older fusermount) as go-fuse does.
func fusermountPath() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p, err := exec.LookPath("/bin/" + name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("fusermount3 not found")
}

// userAllowOther reports whether /etc/fuse.conf lets non-root users mount
// with allow_other.
func userAllowOther() bool {
	f, err := os.Open("/etc/fuse.conf")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "user_allow_other" {
			return true
		}
	}
	return false
}
