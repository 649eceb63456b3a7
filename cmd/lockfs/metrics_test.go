package main

import (
	"context"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/lockengine"
	"github.com/lockfs/lockfs/lockengine/dirlock"
)

// gather returns the value of every sample without labels, and of the
// mode="exclusive" sample of labelled families (counters, gauges,
// histogram counts).
func gather(t *testing.T, m *metrics) map[string]float64 {
	t.Helper()
	fams, err := m.reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			if len(s.GetLabel()) > 0 && !hasLabel(s, "mode", "exclusive") && !hasLabel(s, "via", "flock") {
				continue
			}
			switch {
			case s.Counter != nil:
				out[f.GetName()] = s.GetCounter().GetValue()
			case s.Gauge != nil:
				out[f.GetName()] = s.GetGauge().GetValue()
			case s.Histogram != nil:
				out[f.GetName()] = float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func hasLabel(s *dto.Metric, name, value string) bool {
	for _, l := range s.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func TestMetricsCollect(t *testing.T) {
	b, err := dirlock.Open(t.TempDir(), dirlock.Options{})
	require.NoError(t, err)
	m := newMetrics(b)
	q := lockengine.NewQueue(b, lockengine.QueueOptions{Observer: m, LockDelay: lockengine.NoLockDelay})
	t.Cleanup(func() { _ = q.Close() })
	m.setEngine(q)

	ctx := context.Background()
	l, err := q.Acquire(lockengine.WithOwner(ctx, lockengine.Owner{UID: 5, Via: lockengine.ViaFlock}), "x", lockengine.Exclusive)
	require.NoError(t, err)
	v := gather(t, m)
	assert.Equal(t, 1.0, v[metricLocksHeld])
	assert.Equal(t, 1.0, v[metricHolders])
	assert.Equal(t, 1.0, v[metricAcquisitions])
	assert.Equal(t, 1.0, v[metricWaitSeconds])
	assert.Equal(t, 0.0, v[metricHeartbeatFail])

	require.NoError(t, q.Break(ctx, "x", lockengine.Owner{UID: 0}))
	<-l.Done()
	require.NoError(t, l.Release())
	v = gather(t, m)
	assert.Equal(t, 1.0, v[metricLosses])
	assert.Contains(t, v, metricHoldSeconds)
}
