package main

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

// Metric names served at /metrics with --metrics-addr. Labels are bounded:
// mode is "shared" or "exclusive"; lock names are never labels.
const (
	metricLocksHeld     = "lockfs_locks_held"               // gauge: names held (including broken names in their lock-delay)
	metricHolders       = "lockfs_lock_holders"             // gauge: open descriptors holding a lock
	metricWaiters       = "lockfs_lock_waiters"             // gauge: open(2) calls waiting
	metricLocksLost     = "lockfs_locks_lost"               // gauge: names lost whose holders have not closed yet
	metricAcquisitions  = "lockfs_acquisitions_total"       // counter{mode}
	metricReleases      = "lockfs_releases_total"           // counter{mode}
	metricLosses        = "lockfs_losses_total"             // counter{mode}: leases lost (heartbeat, takeover, break)
	metricWaitSeconds   = "lockfs_wait_seconds"             // histogram{mode}: open(2) to grant
	metricHoldSeconds   = "lockfs_hold_seconds"             // histogram{mode}: grant to release
	metricHeartbeatFail = "lockfs_heartbeat_failures_total" // counter: failed heartbeats (dir backend)
)

// metrics is the Prometheus side of a mount: a lockengine.Observer for the
// counters and histograms, and a Collector that reads the gauges from
// Engine.Snapshot at scrape time.
type metrics struct {
	reg    *prometheus.Registry
	eng    atomic.Pointer[lockengine.Engine]
	acq    *prometheus.CounterVec
	rel    *prometheus.CounterVec
	losses *prometheus.CounterVec
	wait   *prometheus.HistogramVec
	hold   *prometheus.HistogramVec

	heldDesc, holdersDesc, waitersDesc, lostDesc *prometheus.Desc

	// The children of each vector by Mode (Shared, Exclusive), resolved
	// once: the Observer methods run on every grant and release.
	byMode [lockengine.Exclusive + 1]modeMetrics
}

type modeMetrics struct {
	acq, rel, losses prometheus.Counter
	wait, hold       prometheus.Observer
}

// forMode returns the children for mode, nil for an invalid mode (which
// the engine never reports).
func (m *metrics) forMode(mode lockengine.Mode) *modeMetrics {
	if !mode.Valid() {
		return nil
	}
	return &m.byMode[mode]
}

// newMetrics registers every metric; heartbeat failures only when backend
// is a *dirlock.Backend.
func newMetrics(backend lockengine.Backend) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	buckets := []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 1800, 3600}
	m.acq = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricAcquisitions,
		Help: "Locks granted, by mode."}, []string{"mode"})
	m.rel = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricReleases,
		Help: "Locks released by their holders (last close), by mode."}, []string{"mode"})
	m.losses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricLosses,
		Help: "Leases lost while held (heartbeat failure, takeover, admin break, backend loss), by mode."}, []string{"mode"})
	m.wait = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricWaitSeconds,
		Help: "Time from the open(2) request to the grant, by mode.", Buckets: buckets}, []string{"mode"})
	m.hold = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricHoldSeconds,
		Help: "Time from the grant to the release, by mode.", Buckets: buckets}, []string{"mode"})
	m.heldDesc = prometheus.NewDesc(metricLocksHeld, "Lock names currently held (including broken names in their lock-delay).", nil, nil)
	m.holdersDesc = prometheus.NewDesc(metricHolders,
		"Leases currently held, by the interface that took them (open, flock, posix).", []string{"via"}, nil)
	m.waitersDesc = prometheus.NewDesc(metricWaiters,
		"Requests currently waiting for a lock, by interface (open, flock, posix).", []string{"via"}, nil)
	m.lostDesc = prometheus.NewDesc(metricLocksLost, "Lock names lost whose holders have not closed their descriptors yet.", nil, nil)
	for _, mode := range []lockengine.Mode{lockengine.Shared, lockengine.Exclusive} {
		// Series for both modes exist from the start, so that
		// dashboards see them at once.
		l := mode.String()
		m.byMode[mode] = modeMetrics{acq: m.acq.WithLabelValues(l), rel: m.rel.WithLabelValues(l),
			losses: m.losses.WithLabelValues(l), wait: m.wait.WithLabelValues(l), hold: m.hold.WithLabelValues(l)}
	}
	m.reg.MustRegister(m.acq, m.rel, m.losses, m.wait, m.hold, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if db, ok := backend.(*dirlock.Backend); ok {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: metricHeartbeatFail,
			Help: "Heartbeat refreshes or verifications of held locks that failed."},
			func() float64 { return float64(db.HeartbeatFailures()) }))
	}
	return m
}

func (m *metrics) setEngine(eng lockengine.Engine) { m.eng.Store(&eng) }

// Limits of the metrics server, so that slow or many clients cannot tie
// up the daemon: a client must send its request headers within
// metricsReadHeaderTimeout and the whole request within metricsReadTimeout,
// take the response within metricsWriteTimeout, and an idle keep-alive
// connection is closed after metricsIdleTimeout. At most
// metricsMaxInFlight scrapes are served at once (more get 503).
const (
	metricsReadHeaderTimeout = 5 * time.Second
	metricsReadTimeout       = 10 * time.Second
	metricsWriteTimeout      = 30 * time.Second
	metricsIdleTimeout       = 60 * time.Second
	metricsMaxHeaderBytes    = 16 << 10
	metricsMaxInFlight       = 4
)

// handler serves the registry at most metricsMaxInFlight scrapes at once.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{MaxRequestsInFlight: metricsMaxInFlight})
}

// newMetricsServer returns the HTTP server of --metrics-addr: h at
// /metrics, nothing else, with the timeouts above.
func newMetricsServer(h http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		MaxHeaderBytes:    metricsMaxHeaderBytes,
	}
}

// Granted implements lockengine.Observer.
func (m *metrics) Granted(name string, mode lockengine.Mode, waited time.Duration) {
	if mm := m.forMode(mode); mm != nil {
		mm.acq.Inc()
		mm.wait.Observe(waited.Seconds())
	}
}

// Released implements lockengine.Observer.
func (m *metrics) Released(name string, mode lockengine.Mode, held time.Duration) {
	if mm := m.forMode(mode); mm != nil {
		mm.rel.Inc()
		mm.hold.Observe(held.Seconds())
	}
}

// Lost implements lockengine.Observer.
func (m *metrics) Lost(name string, mode lockengine.Mode, cause error) {
	if mm := m.forMode(mode); mm != nil {
		mm.losses.Inc()
	}
}

// Describe implements prometheus.Collector for the gauges.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.heldDesc
	ch <- m.holdersDesc
	ch <- m.waitersDesc
	ch <- m.lostDesc
}

// viaLabels are the interfaces the holders and waiters gauges always
// report, so that dashboards see every series from the start.
var viaLabels = []lockengine.Via{lockengine.ViaOpen, lockengine.ViaFlock, lockengine.ViaPOSIX}

// Collect implements prometheus.Collector: the gauges, from one
// Engine.Snapshot (which never blocks on a lock).
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	var held, lost int
	holders := map[lockengine.Via]int{}
	waiters := map[lockengine.Via]int{}
	if p := m.eng.Load(); p != nil {
		for _, info := range (*p).Snapshot() {
			switch info.State {
			case lockengine.StateHeld:
				held++
			case lockengine.StateLost:
				lost++
			}
			for _, l := range info.Leases {
				if !l.Lost {
					holders[l.Owner.Via]++
				}
			}
			for _, o := range info.Waiting {
				waiters[o.Via]++
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(m.heldDesc, prometheus.GaugeValue, float64(held))
	emit := func(d *prometheus.Desc, counts map[lockengine.Via]int) {
		for _, v := range viaLabels {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(counts[v]), v.String())
		}
		// Leases taken through the Go API (the engine's own, during a
		// break's lock-delay) have no interface.
		if n := counts[lockengine.ViaUnknown]; n > 0 {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n), "engine")
		}
	}
	emit(m.holdersDesc, holders)
	emit(m.waitersDesc, waiters)
	ch <- prometheus.MustNewConstMetric(m.lostDesc, prometheus.GaugeValue, float64(lost))
}
