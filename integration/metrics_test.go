package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
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
