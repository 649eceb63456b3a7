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

// visibilityFlags are the flags of 'lockfs mount' for inspection, admin
// break and metrics.
type visibilityFlags struct {
	lockDelay   time.Duration
	metricsAddr string
}

// registerVisibilityFlags adds --lock-delay and --metrics-addr to fl.
func registerVisibilityFlags(fl *flag.FlagSet, vf *visibilityFlags) {
	fl.DurationVar(&vf.lockDelay, "lock-delay", lockengine.DefaultLockDelay,
		"after a lock is broken (rm MOUNTPOINT/NAME, lockfs break), waiters are granted only this much later")
	fl.StringVar(&vf.metricsAddr, "metrics-addr", "",
		"serve Prometheus metrics at http://HOST:PORT/metrics (off when empty)")
}

// check validates the flags.
func (vf *visibilityFlags) check() error {
	if vf.lockDelay < 0 {
		return usageErrorf("mount: --lock-delay must not be negative, got %v", vf.lockDelay)
	}
	if vf.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(vf.metricsAddr); err != nil {
			return usageErrorf("mount: --metrics-addr %q: want HOST:PORT: %w", vf.metricsAddr, err)
		}
	}
	return nil
}

// visibility is what the flags start next to the engine: the queue options
// and, with --metrics-addr, the metrics server.
type visibility struct {
	// queueOptions are passed to lockengine.NewQueue.
	queueOptions lockengine.QueueOptions
	metrics      *metrics
	srv          *http.Server
	ln           net.Listener
	log          *slog.Logger
}

// startVisibility checks vf, listens on --metrics-addr (so that a bad or
// busy address fails the start) and returns the queue options for the
// engine. Call setEngine once the engine exists, and stop at shutdown.
func startVisibility(vf visibilityFlags, backend lockengine.Backend, logger *slog.Logger) (*visibility, error) {
	if err := vf.check(); err != nil {
		return nil, err
	}
	v := &visibility{log: logger, queueOptions: lockengine.QueueOptions{Log: logger, LockDelay: vf.lockDelay}}
	if vf.lockDelay == 0 {
		v.queueOptions.LockDelay = lockengine.NoLockDelay
	}
	if vf.metricsAddr == "" {
		return v, nil
	}
	v.metrics = newMetrics(backend)
	v.queueOptions.Observer = v.metrics
	ln, err := net.Listen("tcp", vf.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("mount: --metrics-addr: %w", err)
	}
	v.ln = ln
	mux := http.NewServeMux()
	mux.Handle("/metrics", v.metrics.handler())
	v.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return v, nil
}

// setEngine gives the metrics their engine (for the gauges) and starts
// serving them.
func (v *visibility) setEngine(eng lockengine.Engine) {
	if v.metrics == nil {
		return
	}
	v.metrics.setEngine(eng)
	v.log.Info("serving metrics", "addr", v.ln.Addr().String(), "path", "/metrics")
	go func() {
		if err := v.srv.Serve(v.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			v.log.Error("metrics server failed", "err", err)
		}
	}()
}

// stop closes the metrics server.
func (v *visibility) stop() {
	if v == nil || v.srv == nil {
		return
	}
	_ = v.srv.Close()
	_ = v.ln.Close() // when Serve never ran
}
