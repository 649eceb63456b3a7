package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/lockfs/lockfs/lockengine"
)

// queueFlags are the flags of 'lockfs mount' that configure the Queue:
// --lock-delay (how long a broken name stays unavailable) and
// --metrics-addr (an Observer of the Queue, served to Prometheus).
type queueFlags struct {
	lockDelay   time.Duration
	metricsAddr string
}

// registerQueueFlags adds --lock-delay and --metrics-addr to fl.
func registerQueueFlags(fl *flag.FlagSet, qf *queueFlags) {
	fl.DurationVar(&qf.lockDelay, "lock-delay", lockengine.DefaultLockDelay,
		"after a lock is broken (rm MOUNTPOINT/NAME, lockfs break), waiters are granted only this much later")
	fl.StringVar(&qf.metricsAddr, "metrics-addr", "",
		"serve Prometheus metrics at http://HOST:PORT/metrics (off when empty)")
}

// check validates the flags.
func (qf *queueFlags) check() error {
	if qf.lockDelay < 0 {
		return usageErrorf("mount: --lock-delay must not be negative, got %v", qf.lockDelay)
	}
	if qf.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(qf.metricsAddr); err != nil {
			return usageErrorf("mount: --metrics-addr %q: want HOST:PORT: %w", qf.metricsAddr, err)
		}
	}
	return nil
}

// queueSetup is what the queue flags start next to the engine: the
// Queue's options and, with --metrics-addr, the metrics server.
type queueSetup struct {
	// queueOptions are passed to lockengine.NewQueue.
	queueOptions lockengine.QueueOptions
	metrics      *metrics
	srv          *http.Server
	ln           net.Listener
	log          *slog.Logger
}

// startQueueSetup checks qf, listens on --metrics-addr (so that a bad or
// busy address fails the start) and returns the queue options for the
// engine. Call setEngine once the engine exists, and stop at shutdown.
func startQueueSetup(qf queueFlags, backend lockengine.Backend, logger *slog.Logger) (*queueSetup, error) {
	if err := qf.check(); err != nil {
		return nil, err
	}
	qs := &queueSetup{log: logger, queueOptions: lockengine.QueueOptions{Log: logger, LockDelay: qf.lockDelay}}
	if qf.lockDelay == 0 {
		qs.queueOptions.LockDelay = lockengine.NoLockDelay
	}
	if qf.metricsAddr == "" {
		return qs, nil
	}
	qs.metrics = newMetrics(backend)
	qs.queueOptions.Observer = qs.metrics
	ln, err := net.Listen("tcp", qf.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("mount: --metrics-addr: %w", err)
	}
	qs.ln = ln
	qs.srv = newMetricsServer(qs.metrics.handler())
	return qs, nil
}

// setEngine gives the metrics their engine (for the gauges) and starts
// serving them.
func (qs *queueSetup) setEngine(eng lockengine.Engine) {
	if qs.metrics == nil {
		return
	}
	qs.metrics.setEngine(eng)
	qs.log.Info("serving metrics", "addr", qs.ln.Addr().String(), "path", "/metrics")
	go func() {
		if err := qs.srv.Serve(qs.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			qs.log.Error("metrics server failed", "err", err)
		}
	}()
}

// stop closes the metrics server.
func (qs *queueSetup) stop() {
	if qs == nil || qs.srv == nil {
		return
	}
	_ = qs.srv.Close()
	_ = qs.ln.Close() // when Serve never ran
}
