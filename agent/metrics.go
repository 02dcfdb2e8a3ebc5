package agent

import (
	"context"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/internal/httpserve"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// agentCounters are the agent's own monotonic counters, kept in its memory
// (an agent restart resets them, which Prometheus handles as a counter
// reset).
type agentCounters struct {
	finished [5]atomic.Uint64 // by kilnv1.JobResult
	sessions atomic.Uint64
}

func (c *agentCounters) jobFinished(r kilnv1.JobResult) {
	if int(r) >= 0 && int(r) < len(c.finished) {
		c.finished[r].Add(1)
	}
}

var (
	agentResultNames = map[kilnv1.JobResult]string{
		kilnv1.JobResult_JOB_RESULT_PASSED:    "passed",
		kilnv1.JobResult_JOB_RESULT_FAILED:    "failed",
		kilnv1.JobResult_JOB_RESULT_TIMED_OUT: "timed_out",
		kilnv1.JobResult_JOB_RESULT_CANCELED:  "canceled",
	}
	agentLabels       = []string{"agent"}
	descAgentJobs     = prometheus.NewDesc("kiln_agent_jobs_total", "Job attempts this agent finished, by result (passed, failed, timed_out, canceled).", []string{"agent", "result"}, nil)
	descAgentSessions = prometheus.NewDesc("kiln_agent_sessions_total", "Sessions this agent registered with a leader (1 plus its reconnects).", agentLabels, nil)
	descAgentSlots    = prometheus.NewDesc("kiln_agent_offered_slots", "Job slots this agent offers.", agentLabels, nil)
	descAgentHeld     = prometheus.NewDesc("kiln_agent_attempts", "Job attempts this agent holds: running, or finished and waiting for the leader's acknowledgement.", []string{"agent", "state"}, nil)
	descAgentUnacked  = prometheus.NewDesc("kiln_agent_unacked_log_bytes", "Log output of held attempts not yet acknowledged as committed by the cluster.", agentLabels, nil)
	descAgentConn     = prometheus.NewDesc("kiln_agent_connected", "1 while this agent has a registered session with the leader, else 0.", agentLabels, nil)
	descAgentDraining = prometheus.NewDesc("kiln_agent_draining", "1 once this agent drains (takes no new jobs), else 0.", agentLabels, nil)
)

// Collector returns the agent's Prometheus collector: its job results,
// sessions, slots, held attempts, unacknowledged log bytes, connection and
// drain state. Every series carries the agent's name, so the built-in
// agent of kiln-coordinator --dev can share its coordinator's registry.
func (a *Agent) Collector() prometheus.Collector { return agentCollector{a} }

type agentCollector struct{ a *Agent }

func (c agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgentJobs, descAgentSessions, descAgentSlots, descAgentHeld, descAgentUnacked, descAgentConn, descAgentDraining} {
		ch <- d
	}
}

func (c agentCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	name := a.cfg.Name
	for r, label := range agentResultNames {
		ch <- prometheus.MustNewConstMetric(descAgentJobs, prometheus.CounterValue, float64(a.counters.finished[r].Load()), name, label)
	}
	ch <- prometheus.MustNewConstMetric(descAgentSessions, prometheus.CounterValue, float64(a.counters.sessions.Load()), name)
	ch <- prometheus.MustNewConstMetric(descAgentSlots, prometheus.GaugeValue, float64(a.cfg.Slots), name)

	a.mu.Lock()
	var running, finished int
	var unacked int64
	for _, at := range a.attempts {
		if at.finished != nil {
			finished++
		} else {
			running++
		}
		unacked += at.unacked
	}
	connected, draining := a.sess != nil, a.draining
	a.mu.Unlock()

	ch <- prometheus.MustNewConstMetric(descAgentHeld, prometheus.GaugeValue, float64(running), name, "running")
	ch <- prometheus.MustNewConstMetric(descAgentHeld, prometheus.GaugeValue, float64(finished), name, "finished")
	ch <- prometheus.MustNewConstMetric(descAgentUnacked, prometheus.GaugeValue, float64(unacked), name)
	ch <- prometheus.MustNewConstMetric(descAgentConn, prometheus.GaugeValue, b2f(connected), name)
	ch <- prometheus.MustNewConstMetric(descAgentDraining, prometheus.GaugeValue, b2f(draining), name)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveHTTP binds the agent's HTTP server when Config.HTTPAddr is set (its
// own registry: the agent collector and the Go and process collectors)
// and serves /metrics until the returned stop is called (when Run returns).
func (a *Agent) serveHTTP(ctx context.Context) (stop func(), err error) {
	if a.cfg.HTTPAddr == "" {
		return func() {}, nil
	}
	srv, err := httpserve.New(a.cfg.HTTPAddr, a.log.Named("http"))
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), a.Collector())
	srv.HandleMetrics(reg)
	a.httpAddr.Store(srv.Addr())
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Run(ctx); err != nil {
			a.log.Error("http server stopped", zap.Error(err))
		}
	}()
	return func() { cancel(); <-done }, nil
}

// HTTPAddr is the bound address of the agent's /metrics once Run started
// it ("" before, or without Config.HTTPAddr).
func (a *Agent) HTTPAddr() string {
	v, _ := a.httpAddr.Load().(string)
	return v
}
