package metrics

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the leader's clock when the history below starts.
var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func ms(d time.Duration) int64 { return t0.Add(d).UnixMilli() }

// history applies: agent a1 (2 slots) connected, agent a2 lost; build 1
// with jobs x (passed after 30 s, queued 2 s) and y (failed after 90 s,
// queued 4 s); build 2 with one job queued since t0+100s and one needing
// it (waiting).
func history(t *testing.T) *state.Store {
	t.Helper()
	s := state.New()
	idx := uint64(0)
	next := func() uint64 { idx++; return idx }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.RegisterAgent(next(), &fsmv1.RegisterAgent{Name: "a1", Slots: 2, SessionId: "s1", Labels: map[string]string{"os": "linux"}, TimeUnixMs: ms(0)}))
	must(s.RegisterAgent(next(), &fsmv1.RegisterAgent{Name: "a2", Slots: 3, SessionId: "s2", TimeUnixMs: ms(0)}))
	must(s.ExpireAgent(next(), &fsmv1.ExpireAgent{Name: "a2", SessionId: "s2", TimeUnixMs: ms(0)}))
	_, err := s.SubmitBuild(next(), &fsmv1.SubmitBuild{RequestId: "r1", TimeUnixMs: ms(0), Steps: []*kilnv1.StepSpec{
		{Key: "x", Commands: []string{"true"}, Needs: []string{}},
		{Key: "y", Commands: []string{"false"}, Needs: []string{}},
	}})
	must(err)
	run := func(job string, queued, started, finished time.Duration, res kilnv1.JobResult) {
		t.Helper()
		must(s.AssignJob(next(), &fsmv1.AssignJob{JobId: job, Attempt: 1, Agent: "a1", TimeUnixMs: ms(queued)}))
		_, err := s.StartJob(next(), &fsmv1.StartJob{JobId: job, Attempt: 1, Agent: "a1", TimeUnixMs: ms(started)})
		must(err)
		_, err = s.FinishJob(next(), &fsmv1.FinishJob{Agent: "a1", TimeUnixMs: ms(finished),
			Finished: &kilnv1.JobFinished{JobId: job, Attempt: 1, Result: res}})
		must(err)
	}
	run("1.x", 2*time.Second, 2*time.Second, 32*time.Second, kilnv1.JobResult_JOB_RESULT_PASSED)
	run("1.y", 4*time.Second, 4*time.Second, 94*time.Second, kilnv1.JobResult_JOB_RESULT_FAILED)
	_, err = s.SubmitBuild(next(), &fsmv1.SubmitBuild{RequestId: "r2", TimeUnixMs: ms(100 * time.Second), Steps: []*kilnv1.StepSpec{
		{Key: "a", Commands: []string{"true"}, Needs: []string{}},
		{Key: "b", Commands: []string{"true"}, Needs: []string{"a"}},
	}})
	must(err)
	return s
}

func newTestRegistry(tb testing.TB, s *state.Store) *prometheus.Registry {
	tb.Helper()
	blobs, err := blobstore.Open(tb.TempDir(), blobstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return NewRegistry(Sources{
		Store: s,
		Blobs: blobs,
		Raft: func() raftnode.Health {
			return raftnode.Health{Leader: true, Term: 3, LastLogIndex: 12, CommitIndex: 12, AppliedIndex: 12}
		},
		Now: func() time.Time { return t0.Add(160 * time.Second) },
	})
}

func TestStateMetricsMatchHistory(t *testing.T) {
	reg := newTestRegistry(t, history(t))
	want := `
# HELP kiln_queue_depth Jobs queued and waiting for an agent.
# TYPE kiln_queue_depth gauge
kiln_queue_depth 1
# HELP kiln_oldest_queued_job_age_seconds Age of the oldest queued job (0 when the queue is empty).
# TYPE kiln_oldest_queued_job_age_seconds gauge
kiln_oldest_queued_job_age_seconds 60
# HELP kiln_builds_total Builds that finished, by result (passed, failed, canceled), from the replicated state, expired builds included.
# TYPE kiln_builds_total counter
kiln_builds_total{result="canceled"} 0
kiln_builds_total{result="failed"} 1
kiln_builds_total{result="passed"} 0
# HELP kiln_agents Registered agents by state (connected, draining, disconnected, lost).
# TYPE kiln_agents gauge
kiln_agents{state="connected"} 1
kiln_agents{state="disconnected"} 0
kiln_agents{state="draining"} 0
kiln_agents{state="lost"} 1
# HELP kiln_agent_slots Agent job slots: busy (an assigned or running job), free (on a connected agent), unavailable (draining, disconnected or lost agents).
# TYPE kiln_agent_slots gauge
kiln_agent_slots{state="busy"} 0
kiln_agent_slots{state="free"} 2
kiln_agent_slots{state="unavailable"} 3
# HELP kiln_raft_leader 1 if this coordinator is the Raft leader, else 0.
# TYPE kiln_raft_leader gauge
kiln_raft_leader 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"kiln_queue_depth", "kiln_oldest_queued_job_age_seconds", "kiln_builds_total", "kiln_agents", "kiln_agent_slots", "kiln_raft_leader"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetHistogram() != nil:
				byName[mf.GetName()+"_count"] = float64(m.GetHistogram().GetSampleCount())
				byName[mf.GetName()+"_sum"] = m.GetHistogram().GetSampleSum()
			case m.GetCounter() != nil && len(m.GetLabel()) == 1:
				byName[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil && len(m.GetLabel()) == 1:
				byName[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	checks := map[string]float64{
		// x ran 30 s, y 90 s; both started the moment they were assigned,
		// 2 s and 4 s after they were queued at t0.
		"kiln_job_duration_seconds_count": 2, "kiln_job_duration_seconds_sum": 120,
		"kiln_queue_wait_seconds_count": 2, "kiln_queue_wait_seconds_sum": 6,
		"kiln_jobs_total/passed": 1, "kiln_jobs_total/failed": 1, "kiln_jobs_total/lost": 0,
		"kiln_jobs/queued": 1, "kiln_jobs/waiting": 1, "kiln_jobs/running": 0,
	}
	for k, v := range checks {
		if got, ok := byName[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
}

// TestCountersSurviveBuildExpiry: build expiry deletes build 1 (failed;
// jobs passed and failed) from the state, yet the result counters keep
// it, here and on a node restored from a snapshot taken after.
func TestCountersSurviveBuildExpiry(t *testing.T) {
	s := history(t)
	removed, err := s.ExpireBuilds(s.LastIndex()+1, &fsmv1.ExpireBuilds{TimeUnixMs: ms(time.Hour), RetentionMs: time.Minute.Milliseconds()})
	if err != nil || len(removed) != 1 || removed[0] != "1" {
		t.Fatalf("expired %v, %v; want build 1", removed, err)
	}
	if _, ok := s.Build("1"); ok {
		t.Fatal("build 1 still stored")
	}
	restored := state.New()
	var recs []*fsmv1.SnapshotRecord
	if err := s.Snapshot().Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	i := 0
	if err := restored.Restore(func() (*fsmv1.SnapshotRecord, error) {
		if i == len(recs) {
			return nil, io.EOF
		}
		i++
		return recs[i-1], nil
	}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP kiln_builds_total Builds that finished, by result (passed, failed, canceled), from the replicated state, expired builds included.
# TYPE kiln_builds_total counter
kiln_builds_total{result="canceled"} 0
kiln_builds_total{result="failed"} 1
kiln_builds_total{result="passed"} 0
`
	for name, st := range map[string]*state.Store{"live": s, "restored": restored} {
		reg := newTestRegistry(t, st)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kiln_builds_total"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "kiln_jobs_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				res := m.GetLabel()[0].GetValue()
				if (res == "passed" || res == "failed") && m.GetCounter().GetValue() != 1 {
					t.Errorf("%s: kiln_jobs_total{result=%q} = %v, want 1", name, res, m.GetCounter().GetValue())
				}
			}
		}
	}
}

// TestMetricsPassPromtool runs `promtool check metrics` (Debian package
// prometheus) over the exposition of a registry with every series.
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; .ci/run installs it): skipping the lint of /metrics")
	}
	reg := newTestRegistry(t, history(t))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := PromtoolCheck(promtool, buf.Bytes()); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	for _, name := range []string{"kiln_jobs_total", "kiln_job_duration_seconds_bucket", "kiln_queue_wait_seconds_bucket",
		"kiln_raft_commit_duration_seconds_bucket", "kiln_raft_fsm_apply_duration_seconds_bucket", "go_goroutines", "process_cpu_seconds_total"} {
		if !bytes.Contains(buf.Bytes(), []byte("\n"+name)) {
			t.Errorf("exposition lacks %s", name)
		}
	}
}

// BenchmarkCollect measures one scrape of the collector over 10 000
// finished-or-queued builds of two jobs each (20 000 jobs).
func BenchmarkCollect(b *testing.B) {
	s := state.New()
	for i := uint64(1); i <= 10000; i++ {
		if _, err := s.SubmitBuild(i, &fsmv1.SubmitBuild{TimeUnixMs: ms(0), Steps: []*kilnv1.StepSpec{
			{Key: "a", Commands: []string{"true"}}, {Key: "b", Commands: []string{"true"}}}}); err != nil {
			b.Fatal(err)
		}
	}
	c := NewCollector(Sources{Store: s, Now: func() time.Time { return t0 }})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch := make(chan prometheus.Metric, 64)
		go func() { c.Collect(ch); close(ch) }()
		for range ch {
		}
	}
}

// PromtoolCheck pipes an exposition to `promtool check metrics`, which
// exits non-zero on lint problems (naming, units, help, types).
func PromtoolCheck(promtool string, exposition []byte) ([]byte, error) {
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	return cmd.CombinedOutput()
}

// TestDashboardUsesExportedSeries: every kiln_* series the Grafana
// dashboard (deployments/grafana) queries is one the coordinator exports,
// and the example Prometheus configuration is valid.
func TestDashboardUsesExportedSeries(t *testing.T) {
	data, err := os.ReadFile("../../deployments/grafana/kiln-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	mfs, err := newTestRegistry(t, history(t)).Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[mf.GetName()+s] = true
			}
		}
	}
	name := regexp.MustCompile(`\b(kiln|go|process)_[a-z_]+\b`)
	used := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				used++
				if !exported[m] {
					t.Errorf("panel %q queries %s, which /metrics does not export", p.Title, m)
				}
			}
		}
	}
	if used < 10 {
		t.Fatalf("only %d series found in the dashboard", used)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "config", "../../deployments/grafana/prometheus.yml").CombinedOutput(); err != nil {
			t.Fatalf("promtool check config: %v\n%s", err, out)
		}
	}
}
