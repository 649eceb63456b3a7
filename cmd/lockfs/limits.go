package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/lockfs/lockfs/fsnode"
)

// Defaults of the per-user limits of 'lockfs mount' (see fsnode/limits.go).
// The held limit stays well below the descriptor limit the daemon raises
// itself to (typically 2^19 or more under systemd), so that one uid cannot
// use up the descriptors of the dir backend (one per held name).
const (
	defaultMaxHeldPerUser    = 1024
	defaultMaxWaitingPerUser = 1024
	defaultMaxNamesPerUser   = 16384
	defaultMaxDirsPerUser    = 4096
)

// fdReserve is how many descriptors stay for root (and for the daemon's
// own use: etcd connections, metrics, logs) when non-root requests are
// refused because the held leases approach RLIMIT_NOFILE.
const fdReserve = 256

// limitFlags are the per-user limit flags of 'lockfs mount'.
type limitFlags struct {
	heldPerUser, waitingPerUser, namesPerUser, dirsPerUser int
	limitRoot                                              bool
	nameSweep                                              time.Duration
}

// registerLimitFlags adds the limit flags to fl.
func registerLimitFlags(fl *flag.FlagSet, lf *limitFlags) {
	fl.IntVar(&lf.heldPerUser, "max-held-per-user", defaultMaxHeldPerUser,
		"most locks one uid may hold at once; past it opens and lock calls fail with ENOLCK (0: no limit)")
	fl.IntVar(&lf.waitingPerUser, "max-waiting-per-user", defaultMaxWaitingPerUser,
		"most lock requests of one uid that may wait at once; past it they fail with ENOLCK (0: no limit)")
	fl.IntVar(&lf.namesPerUser, "max-names-per-user", defaultMaxNamesPerUser,
		"most distinct lock names (with live inodes) one uid may have looked up or opened; past it ENOLCK (0: no limit)")
	fl.IntVar(&lf.dirsPerUser, "max-dirs-per-user", defaultMaxDirsPerUser,
		"most lock directories one uid may own of those made through this daemon since it started; past it mkdir fails with EDQUOT (0: no limit)")
	fl.BoolVar(&lf.limitRoot, "limit-root", false, "apply the per-user limits to root (uid 0) too")
	fl.DurationVar(&lf.nameSweep, "name-sweep", fsnode.DefaultNameSweep,
		"how often the kernel is asked to forget names nobody has open and nobody used since the last sweep (0: never)")
}

// check validates the flags.
func (lf *limitFlags) check() error {
	for _, v := range []struct {
		name string
		n    int
	}{{"max-held-per-user", lf.heldPerUser}, {"max-waiting-per-user", lf.waitingPerUser}, {"max-names-per-user", lf.namesPerUser},
		{"max-dirs-per-user", lf.dirsPerUser}} {
		if v.n < 0 {
			return usageErrorf("mount: --%s must not be negative, got %d", v.name, v.n)
		}
	}
	if lf.nameSweep < 0 {
		return usageErrorf("mount: --name-sweep must not be negative, got %v", lf.nameSweep)
	}
	return nil
}

// options returns the fsnode limits for a descriptor limit of nofile.
func (lf *limitFlags) options(nofile uint64) fsnode.Limits {
	l := fsnode.Limits{HeldPerUser: lf.heldPerUser, WaitingPerUser: lf.waitingPerUser,
		NamesPerUser: lf.namesPerUser, DirsPerUser: lf.dirsPerUser, LimitRoot: lf.limitRoot}
	if nofile != unix.RLIM_INFINITY && nofile > 0 {
		l.HeldTotal = max(1, int(min(nofile, 1<<30))-fdReserve-openFDs())
	}
	return l
}

// nameSweepOption is --name-sweep as fsnode.Options.NameSweep.
func (lf *limitFlags) nameSweepOption() time.Duration {
	if lf.nameSweep == 0 {
		return -1
	}
	return lf.nameSweep
}

// openFDs counts the descriptors open now (-1 when unknown, counted as 0).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// raiseNofile raises the soft RLIMIT_NOFILE to the hard limit and returns
// the resulting soft limit. The dir backend holds one descriptor per held
// name, so the usual soft limit of 1024 would cap the whole host's locks at
// about a thousand; the hard limit is what the administrator allows.
func raiseNofile(logger *slog.Logger) uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		logger.Warn("reading RLIMIT_NOFILE failed", "err", err)
		return 0
	}
	if rl.Cur < rl.Max {
		old := rl.Cur
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			logger.Warn("raising RLIMIT_NOFILE failed", "from", old, "to", rl.Max, "err", err)
			rl.Cur = old
		} else {
			logger.Debug("raised RLIMIT_NOFILE", "from", old, "to", rl.Cur)
		}
	}
	return rl.Cur
}

// Metric names of the filesystem's own counters.
const (
	metricLimitRefusals = "lockfs_limit_refusals_total" // counter{limit}: requests refused by a per-user limit
	metricInodes        = "lockfs_inodes"               // gauge: lock-file and lock-directory inodes the daemon keeps
)

// fsCollector serves the fsnode counters to Prometheus.
type fsCollector struct {
	srv                   *fsnode.Server
	refusalsDesc, inoDesc *prometheus.Desc
}

func newFSCollector(srv *fsnode.Server) *fsCollector {
	return &fsCollector{srv: srv,
		refusalsDesc: prometheus.NewDesc(metricLimitRefusals,
			"Requests refused by a per-user limit (held, waiting, names: ENOLCK; dirs: EDQUOT).", []string{"limit"}, nil),
		inoDesc: prometheus.NewDesc(metricInodes, "Lock-file and lock-directory inodes the daemon keeps (looked up, not yet forgotten).", nil, nil)}
}

// Describe implements prometheus.Collector.
func (c *fsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.refusalsDesc
	ch <- c.inoDesc
}

// Collect implements prometheus.Collector.
func (c *fsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range []string{fsnode.LimitHeld, fsnode.LimitWaiting, fsnode.LimitNames, fsnode.LimitDirs} {
		ch <- prometheus.MustNewConstMetric(c.refusalsDesc, prometheus.CounterValue, float64(c.srv.Refusals()[l]), l)
	}
	ch <- prometheus.MustNewConstMetric(c.inoDesc, prometheus.GaugeValue, float64(c.srv.Inodes()))
}

// registerFSMetrics adds the filesystem's counters to the metrics of qs,
// if it serves any.
func registerFSMetrics(qs *queueSetup, srv *fsnode.Server) error {
	if qs == nil || qs.metrics == nil {
		return nil
	}
	if err := qs.metrics.reg.Register(newFSCollector(srv)); err != nil {
		return fmt.Errorf("mount: register filesystem metrics: %w", err)
	}
	return nil
}
