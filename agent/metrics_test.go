package agent

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

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func getMetrics(t *testing.T, addr string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

// TestAgentServesMetrics runs one job and checks the agent's own /metrics:
// the finished job, the session and the slot count, linted by promtool
// where it is installed.
func TestAgentServesMetrics(t *testing.T) {
	srv := startServer(t, nil)
	cfg := testConfig(t, srv.addr)
	cfg.HTTPAddr = "127.0.0.1:0"
	a, _ := startAgent(t, cfg, nil)
	s := srv.nextSession(t)
	s.send(t, assign("1.m", 1, nil, "echo hi"))
	fin := runToFinish(t, s, "1.m", &jobLog{}, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("finished = %v", fin)
	}
	// Run binds the server before it connects: a session means it serves.
	body, err := getMetrics(t, a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`kiln_agent_jobs_total{agent="a1",result="passed"} 1`,
		`kiln_agent_jobs_total{agent="a1",result="failed"} 0`,
		`kiln_agent_sessions_total{agent="a1"} 1`,
		`kiln_agent_offered_slots{agent="a1"} 2`,
		`kiln_agent_connected{agent="a1"} 1`,
		`kiln_agent_draining{agent="a1"} 0`,
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, "\n"+want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus): exposition not linted")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader([]byte(body))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestAgentHTTPAddrBusyFailsRun(t *testing.T) {
	srv := startServer(t, nil)
	cfg := testConfig(t, srv.addr)
	cfg.HTTPAddr = srv.addr // taken by the fake coordinator
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "http-addr") {
		t.Fatalf("Run = %v, want an http-addr listen error", err)
	}
}
