package cli

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fakeOps is an OpsService answering canned responses and recording the
// requests.
type fakeOps struct {
	kilnv1.UnimplementedOpsServiceServer
	mu     sync.Mutex
	queue  *kilnv1.ListQueueResponse
	stats  *kilnv1.DeliveryStats
	qreqs  []*kilnv1.ListQueueRequest
	sreqs  []*kilnv1.GetStatsRequest
	served string
}

func (f *fakeOps) ListQueue(_ context.Context, req *kilnv1.ListQueueRequest) (*kilnv1.ListQueueResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.qreqs = append(f.qreqs, proto.Clone(req).(*kilnv1.ListQueueRequest))
	return f.queue, nil
}

func (f *fakeOps) GetStats(_ context.Context, req *kilnv1.GetStatsRequest) (*kilnv1.GetStatsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sreqs = append(f.sreqs, proto.Clone(req).(*kilnv1.GetStatsRequest))
	return &kilnv1.GetStatsResponse{Stats: f.stats}, nil
}

func (f *fakeOps) serve(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterOpsServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	f.served = lis.Addr().String()
	return f.served
}

var now0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

func TestQueuePrintsPositionWaitAndReason(t *testing.T) {
	f := &fakeOps{queue: &kilnv1.ListQueueResponse{Total: 3, NowUnixMs: now0.UnixMilli(), Jobs: []*kilnv1.WaitingJob{
		{JobId: "7.train", BuildId: "7", Key: "train", State: kilnv1.JobState_JOB_STATE_QUEUED, Position: 1,
			WaitingSinceUnixMs: now0.Add(-90 * time.Second).UnixMilli(), Agents: map[string]string{"gpu": "true"},
			Reason: &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, MissingLabels: []string{"gpu=true"},
				Message: "no agent has ever offered label gpu=true"}},
		{JobId: "8.deploy", BuildId: "8", Key: "deploy", State: kilnv1.JobState_JOB_STATE_WAITING,
			WaitingSinceUnixMs: now0.Add(-time.Hour).UnixMilli(),
			Reason: &kilnv1.WaitReason{Code: kilnv1.WaitCode_WAIT_CODE_CONCURRENCY_GROUP, ConcurrencyGroup: "prod",
				Message: "held by concurrency group prod (limit 1; running: #6)"}},
	}}}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "queue", "--limit", "2")
	must(t, code, 0, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "POS") ||
		!strings.Contains(lines[1], "1    7      train   queued   1m30s   no agent has ever offered label gpu=true") ||
		!strings.Contains(lines[2], "-    8      deploy  waiting  1h0m0s  held by concurrency group prod") {
		t.Fatalf("table:\n%s", out)
	}
	if !strings.Contains(errOut, "1 more waiting job(s) not shown") {
		t.Fatalf("stderr %q lacks the cut notice", errOut)
	}
	if len(f.qreqs) != 1 || f.qreqs[0].GetLimit() != 2 {
		t.Fatalf("requests %v", f.qreqs)
	}

	out, errOut, code = runCLI(t, "--coordinators", addr, "queue", "-o", "json")
	must(t, code, 0, errOut)
	var q QueueJSON
	if err := json.Unmarshal([]byte(out), &q); err != nil {
		t.Fatal(err)
	}
	j := q.Jobs[0]
	if q.Total != 3 || j.Code != "no_matching_agent" || j.WaitedMs != 90_000 || j.Labels["gpu"] != "true" ||
		strings.Join(j.MissingLabels, ",") != "gpu=true" || q.Jobs[1].ConcurrencyGroup != "prod" || q.Jobs[1].Position != 0 {
		t.Fatalf("json %+v", q)
	}
}

func TestQueueEmptyAndBadLimit(t *testing.T) {
	f := &fakeOps{queue: &kilnv1.ListQueueResponse{}}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "queue")
	must(t, code, 0, errOut)
	if out != "no job is waiting\n" {
		t.Fatalf("out %q", out)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "queue", "--limit", "-1")
	must(t, code, ExitUsage, errOut)
}

func TestStatsSendsTheFilterAndPrintsFigures(t *testing.T) {
	f := &fakeOps{stats: &kilnv1.DeliveryStats{
		FromUnixMs: now0.Add(-30 * 24 * time.Hour).UnixMilli(), ToUnixMs: now0.UnixMilli(),
		Builds: 10, Passed: 7, Failed: 2, Canceled: 1,
		BuildTime: &kilnv1.DurationStats{Count: 9, AvgMs: 125_000, P90Ms: 300_000},
		QueueWait: &kilnv1.DurationStats{Count: 30, AvgMs: 1_500, P90Ms: 4_000},
		Stages: []*kilnv1.StageStats{{Stage: 0, Steps: []string{"compile"}, Duration: &kilnv1.DurationStats{Count: 9, AvgMs: 60_000, P90Ms: 90_000},
			FromBuildStart: &kilnv1.DurationStats{Count: 9}}},
		Deployments: 3, FailedDeployments: 1, Changes: 3, ChangeFailureRate: 0.25,
		LeadTime:      &kilnv1.DurationStats{Count: 3, AvgMs: 3_600_000, P90Ms: 7_200_000},
		TimeToRestore: &kilnv1.DurationStats{Count: 1, AvgMs: 1_800_000, P90Ms: 1_800_000},
	}}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "stats", "--repo", "shop", "--pipeline", "deploy", "--since", "30d")
	must(t, code, 0, errOut)
	if len(f.sreqs) != 1 || f.sreqs[0].GetRepo() != "shop" || f.sreqs[0].GetPipeline() != "deploy" || f.sreqs[0].GetSinceMs() != 30*24*3600*1000 {
		t.Fatalf("requests %v", f.sreqs)
	}
	for _, want := range []string{
		"BUILDS               10 (passed 7, failed 2, canceled 1, unfinished 0)",
		"BUILD TIME           avg 2m5s, p90 5m0s (9 builds)",
		"QUEUE WAIT           avg 2s, p90 4s (30 jobs)",
		"DEPLOYMENTS          3 to production, 1 failed",
		"CHANGES              3 reached production",
		"LEAD TIME            avg 1h0m0s, p90 2h0m0s (3 deployments)",
		"CHANGE FAILURE RATE  25.0%",
		"TIME TO RESTORE      avg 30m0s, p90 30m0s (1 restores); 0 unrestored",
		"0      compile  9     1m0s  1m30s  0s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stats output lacks %q:\n%s", want, out)
		}
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "stats", "-o", "json")
	must(t, code, 0, errOut)
	var s StatsJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Builds != 10 || s.BuildTime.AvgMs != 125_000 || s.ChangeFailureRate != 0.25 || len(s.Stages) != 1 || f.sreqs[1].GetSinceMs() != 0 {
		t.Fatalf("json %+v", s)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "stats", "--since", "-3d")
	must(t, code, ExitUsage, errOut)
	if !strings.Contains(errOut, "--since") {
		t.Fatalf("stderr %q", errOut)
	}
}
