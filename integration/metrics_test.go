package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startDev starts kiln-coordinator --dev with its HTTP server on a free
// port and waits until the built-in agent is connected. It returns the
// gRPC and HTTP addresses.
func startDev(t *testing.T, h *harness, extra ...string) (grpcAddr, httpAddr string, p *proc) {
	t.Helper()
	ports := freePorts(t, 2)
	grpcAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	args := append([]string{"--dev", "--data-dir", h.root + "/dev", "--grpc-addr", grpcAddr, "--http-addr", httpAddr}, extra...)
	p = h.startProc("coordinator-dev", "kiln-coordinator", args...)
	eventually(t, 30*time.Second, func() error {
		var agents []agentJSON
		if err := h.ctlJSON([]string{grpcAddr}, &agents, "agents"); err != nil {
			return err
		}
		for _, a := range agents {
			if a.Name == "local" && a.State == "connected" {
				return nil
			}
		}
		return fmt.Errorf("built-in agent \"local\" not connected: %+v", agents)
	})
	return grpcAddr, httpAddr, p
}

// scrape fetches http://addr/metrics.
func scrape(t *testing.T, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v\n%s", resp.StatusCode, err, body)
	}
	return body
}

// TestMetricsEndpointPassesPromtool scrapes a real coordinator (--dev)
// after a build and lints the exposition with `promtool check metrics`.
func TestMetricsEndpointPassesPromtool(t *testing.T) {
	h := newHarness(t)
	addr, httpAddr, p := startDev(t, h)
	if r := h.ctl([]string{addr}, "run", "--wait", "--", "echo", "hello"); r.code != 0 || r.err != nil {
		t.Fatalf("build: %s", r)
	}
	body := scrape(t, httpAddr)
	for _, want := range []string{
		`kiln_builds_total{result="passed"} 1`,
		`kiln_jobs_total{result="passed"} 1`,
		`kiln_job_duration_seconds_count 1`,
		`kiln_queue_wait_seconds_count 1`,
		`kiln_queue_depth 0`,
		`kiln_agents{state="connected"} 1`,
		`kiln_raft_leader 1`,
		"kiln_oldest_queued_job_age_seconds ",
		`kiln_agent_slots{state="free"} `,
		"kiln_raft_commit_duration_seconds_count ",
		"kiln_raft_fsm_apply_duration_seconds_count ",
		"kiln_raft_fsm_apply_batch_commands_count ",
		"kiln_raft_last_contact_seconds ",
		"kiln_log_bytes ",
		"kiln_blob_store_bytes ",
		"go_goroutines ",
		"process_resident_memory_bytes ",
		// The built-in agent's own metrics are served by its coordinator.
		`kiln_agent_jobs_total{agent="local",result="passed"} 1`,
	} {
		if !bytes.Contains(body, []byte("\n"+want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Raft's own timers reach the histograms (the sink matches their keys).
	for _, name := range []string{"kiln_raft_commit_duration_seconds_count", "kiln_raft_fsm_apply_duration_seconds_count", "kiln_raft_fsm_apply_batch_commands_count"} {
		m := regexp.MustCompile(`\n` + name + ` ([0-9.e+]+)\n`).FindSubmatch(body)
		if m == nil {
			t.Errorf("/metrics lacks %s", name)
		} else if v, err := strconv.ParseFloat(string(m[1]), 64); err != nil || v < 1 {
			t.Errorf("%s = %s, want at least one observation", name, m[1])
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; .ci/run installs it): /metrics not linted")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n--- exposition:\n%s", err, out, firstLines(body, 40))
	}
	p.stop(20 * time.Second)
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// TestQueueAndStatsOnARealCoordinator: a job needing gpu=true, which the
// built-in agent does not offer, waits; kilnctl queue and kilnctl status
// name the missing label. A production deploy step then shows in
// kilnctl stats.
func TestQueueAndStatsOnARealCoordinator(t *testing.T) {
	h := newHarness(t)
	addr, _, p := startDev(t, h)
	addrs := []string{addr}

	gpu := h.submit(addrs, "nvidia-smi", "--label", "gpu=true")
	var q struct {
		Total int `json:"total"`
		Jobs  []struct {
			Position      int      `json:"position"`
			Build         string   `json:"build"`
			State         string   `json:"state"`
			Code          string   `json:"code"`
			Reason        string   `json:"reason"`
			MissingLabels []string `json:"missing_labels"`
		} `json:"jobs"`
	}
	if err := h.ctlJSON(addrs, &q, "queue"); err != nil {
		t.Fatal(err)
	}
	const why = "no agent has ever offered label gpu=true"
	if q.Total != 1 || len(q.Jobs) != 1 || q.Jobs[0].Build != gpu || q.Jobs[0].Position != 1 || q.Jobs[0].State != "queued" ||
		q.Jobs[0].Code != "no_matching_agent" || q.Jobs[0].Reason != why || strings.Join(q.Jobs[0].MissingLabels, ",") != "gpu=true" {
		t.Fatalf("queue = %+v", q)
	}
	if r := h.ctl(addrs, "queue"); r.code != 0 || !strings.Contains(r.stdout, why) || !strings.Contains(r.stdout, "POS") {
		t.Fatalf("queue table: %s", r)
	}
	var st struct {
		Jobs []struct {
			State   string `json:"state"`
			Waiting string `json:"waiting"`
		} `json:"jobs"`
	}
	if err := h.ctlJSON(addrs, &st, "status", gpu); err != nil {
		t.Fatal(err)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].Waiting != why {
		t.Fatalf("status of the gpu build: %+v", st)
	}
	if r := h.ctl(addrs, "cancel", gpu); r.code != 0 {
		t.Fatalf("cancel: %s", r)
	}

	file := writeFile(t, h.root, "deploy.yaml", `name: shop
steps:
  - key: build
    commands: ["true"]
  - key: ship
    needs: [build]
    production: true
    commands: ["true"]
`)
	id := h.runFile(addrs, file)
	requirePassed(t, h.waitFinished(addrs, id, 30*time.Second), 1)
	var s struct {
		Builds            int     `json:"builds"`
		Passed            int     `json:"passed"`
		Canceled          int     `json:"canceled"`
		Deployments       int     `json:"deployments"`
		Changes           int     `json:"changes"`
		ChangeFailureRate float64 `json:"change_failure_rate"`
		LeadTime          struct {
			Count int `json:"count"`
		} `json:"lead_time"`
		Stages []struct {
			Steps []string `json:"steps"`
		} `json:"stages"`
	}
	if err := h.ctlJSON(addrs, &s, "stats", "--pipeline", "shop", "--since", "1d"); err != nil {
		t.Fatal(err)
	}
	if s.Builds != 1 || s.Passed != 1 || s.Deployments != 1 || s.Changes != 1 || s.LeadTime.Count != 1 || s.ChangeFailureRate != 0 ||
		len(s.Stages) != 1 || strings.Join(s.Stages[0].Steps, ",") != "build,ship" {
		t.Fatalf("stats of pipeline shop: %+v", s)
	}
	if err := h.ctlJSON(addrs, &s, "stats"); err != nil {
		t.Fatal(err)
	}
	if s.Builds != 2 || s.Canceled != 1 {
		t.Fatalf("stats of every build: %+v", s)
	}
	if r := h.ctl(addrs, "stats", "--since", "yesterday"); r.code != 2 || !strings.Contains(r.stderr, "--since") {
		t.Fatalf("stats with a bad --since: %s", r)
	}
	p.stop(20 * time.Second)
}
