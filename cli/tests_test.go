package cli

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

type testsServer struct {
	kilnv1.UnimplementedControlServiceServer
	failedOnly []bool
}

func (s *testsServer) ListTests(_ context.Context, req *kilnv1.ListTestsRequest) (*kilnv1.ListTestsResponse, error) {
	s.failedOnly = append(s.failedOnly, req.GetFailedOnly())
	cases := []*kilnv1.TestCase{{Classname: "pkg.T", Name: "bad", Result: "failed", DurationMs: 1500, Message: "boom\n\ntrace"}}
	if !req.GetFailedOnly() {
		cases = append([]*kilnv1.TestCase{{Classname: "pkg.T", Name: "shaky", Result: "passed", Flaky: true}}, cases...)
	}
	return &kilnv1.ListTestsResponse{
		Summary: &kilnv1.TestSummary{Total: 2, Passed: 1, Failed: 1, Flaky: 1, DurationMs: 1500},
		Reports: []*kilnv1.TestReport{{Step: "test", Attempt: 2, File: "r.xml", Cases: cases}},
	}, nil
}

func (s *testsServer) FlakyTests(_ context.Context, req *kilnv1.FlakyTestsRequest) (*kilnv1.FlakyTestsResponse, error) {
	return &kilnv1.FlakyTestsResponse{Tests: []*kilnv1.FlakyTest{{Classname: "pkg.T", Name: "shaky", FlakyBuilds: 3, Builds: int32(req.GetBuilds()), LastBuildId: req.GetRepo()}}}, nil
}

func (s *testsServer) GetBuild(_ context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	return &kilnv1.GetBuildResponse{Build: &kilnv1.Build{Id: req.GetBuildId(), State: kilnv1.BuildState_BUILD_STATE_PASSED,
		Tests: &kilnv1.TestSummary{Total: 2, Passed: 2, Flaky: 1, DurationMs: 20}}}, nil
}

func serveTests(t *testing.T, s *testsServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestTestsCommands(t *testing.T) {
	s := &testsServer{}
	addr := serveTests(t, s)
	out, errOut, code := runCLI(t, "--coordinators", addr, "tests", "7")
	must(t, code, 0, errOut)
	if !strings.HasPrefix(out, "2 tests, 1 passed, 1 failed, 0 errored, 0 skipped, 1 flaky (1.5s)\n") ||
		!strings.Contains(out, "RESULT") || !strings.Contains(out, "passed (flaky)") || !strings.Contains(out, "boom") || !strings.Contains(out, "\n--- failed pkg.T.bad (test)\n    boom\n    trace\n") {
		t.Fatalf("tests output:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "tests", "7", "--failed", "-o", "json")
	must(t, code, 0, errOut)
	var tj TestsJSON
	if err := json.Unmarshal([]byte(out), &tj); err != nil || len(tj.Cases) != 1 || tj.Cases[0].Name != "bad" || tj.Summary.Flaky != 1 {
		t.Fatalf("json %v %+v\n%s", err, tj, out)
	}
	if len(s.failedOnly) != 2 || s.failedOnly[0] || !s.failedOnly[1] {
		t.Fatalf("failed_only %v", s.failedOnly)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "tests", "flaky", "--repo", "web", "--builds", "9")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "FLAKY") || !strings.Contains(out, "3      9       pkg.T  shaky  web") {
		t.Fatalf("flaky output:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "status", "7")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "TESTS      2 tests, 2 passed, 0 failed, 0 errored, 0 skipped, 1 flaky (20ms)") {
		t.Fatalf("status:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "status", "7", "-o", "json")
	must(t, code, 0, errOut)
	var bj BuildJSON
	if err := json.Unmarshal([]byte(out), &bj); err != nil || bj.Tests == nil || bj.Tests.Total != 2 || bj.Tests.Flaky != 1 || bj.Tests.DurationMs != 20 {
		t.Fatalf("status json %v %+v", err, bj)
	}
}

func TestFailureLinesBounded(t *testing.T) {
	msg := "Failed\n\nexpected 1\n  got 2\n" + strings.Repeat("at frame\n", 20)
	got := failureLines(msg, 4)
	want := []string{"Failed", "expected 1", "  got 2", "at frame", "..."}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("failureLines = %q, want %q", got, want)
	}
}
