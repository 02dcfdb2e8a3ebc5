package metrics

import (
	"sync"

	gometrics "github.com/hashicorp/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// hashicorp/raft reports its timings through the process-wide go-metrics
// instance; raftSink turns the two Kiln watches into Prometheus histograms.
// There is one Raft member per coordinator process, so process-wide is
// per-member (in-process test clusters share them).
var (
	raftCommit = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kiln_raft_commit_duration_seconds",
		Help:    "Time from the leader dispatching a Raft log entry to a quorum committing it (raft.commitTime; leader only).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. ~4 s
	})
	raftApply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kiln_raft_fsm_apply_duration_seconds",
		Help:    "Time the state machine took to apply one batch of committed commands (raft.fsm.applyBatch; every member). The FSM applies a batch in one state-store transaction.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14), // 50 µs .. ~400 ms
	})
	raftApplyBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kiln_raft_fsm_apply_batch_commands",
		Help:    "Commands per batch the state machine applied (raft.fsm.applyBatchNum; every member).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10), // 1 .. 512
	})
	sinkOnce sync.Once
)

// RegisterRaftTimers installs the go-metrics sink (once per process) and
// registers the Raft latency histograms in reg.
func RegisterRaftTimers(reg prometheus.Registerer) {
	sinkOnce.Do(func() {
		cfg := gometrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableServiceLabel = false
		cfg.EnableRuntimeMetrics = false // no sampling goroutine; the Go collector covers it
		cfg.EnableTypePrefix = false
		_, _ = gometrics.NewGlobal(cfg, raftSink{})
	})
	reg.MustRegister(raftCommit, raftApply, raftApplyBatch)
}

// raftSink is a go-metrics sink that keeps the samples Kiln exports and
// drops everything else.
type raftSink struct{}

// match reports whether key is exactly want.
func match(key []string, want ...string) bool {
	if len(key) != len(want) {
		return false
	}
	for i := range key {
		if key[i] != want[i] {
			return false
		}
	}
	return true
}

// AddSample receives timer samples in milliseconds (go-metrics' default
// granularity) and the batch sizes.
func (raftSink) AddSample(key []string, val float32) {
	switch {
	case match(key, "raft", "commitTime"):
		raftCommit.Observe(float64(val) / 1000)
	case match(key, "raft", "fsm", "applyBatch"), match(key, "raft", "fsm", "apply"):
		// applyBatch with the batching FSM; apply for an FSM without it.
		raftApply.Observe(float64(val) / 1000)
	case match(key, "raft", "fsm", "applyBatchNum"):
		raftApplyBatch.Observe(float64(val))
	}
}

func (s raftSink) AddSampleWithLabels(key []string, val float32, _ []gometrics.Label) {
	s.AddSample(key, val)
}
func (raftSink) SetGauge([]string, float32)                                       {}
func (raftSink) SetGaugeWithLabels([]string, float32, []gometrics.Label)          {}
func (raftSink) SetPrecisionGauge([]string, float64)                              {}
func (raftSink) SetPrecisionGaugeWithLabels([]string, float64, []gometrics.Label) {}
func (raftSink) EmitKey([]string, float32)                                        {}
func (raftSink) IncrCounter([]string, float32)                                    {}
func (raftSink) IncrCounterWithLabels([]string, float32, []gometrics.Label)       {}
