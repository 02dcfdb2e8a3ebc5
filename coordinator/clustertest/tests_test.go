package clustertest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestJUnitResultsAndFlakyAcrossRetry runs a step whose JUnit report has a
// case that fails on the first attempt and passes on the retry: the build
// passes, its summary counts the current attempt and the case is flaky.
func TestJUnitResultsAndFlakyAcrossRetry(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 1)
	marker := filepath.Join(t.TempDir(), "ran-once")
	pass := `<testcase classname="pkg.T" name="ok" time="0.5"/>`
	spec := fmt.Sprintf(`stages:
  - steps:
      - key: test
        junit: [report.xml]
        retry: {on_failure: 1}
        commands:
          - |
            if [ -e %[1]q ]; then
              echo '<testsuite name="s">%[2]s<testcase classname="pkg.T" name="shaky" time="1"/></testsuite>' > report.xml
            else
              touch %[1]q
              echo '<testsuite name="s">%[2]s<testcase classname="pkg.T" name="shaky"><failure message="boom">trace</failure></testcase></testsuite>' > report.xml
              exit 1
            fi
`, marker, pass)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "tests.yaml"})
	done := waitBuild(t, c, b.GetId(), 60*time.Second)
	job := jobsByKey(done)["test"]
	l := c.Leader()
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || job.GetAttempt() != 2 {
		t.Fatalf("build %s (%s), attempt %d; log:\n%s", done.GetState(), done.GetReason(), job.GetAttempt(), jobLog(l, job))
	}
	if got := jobLog(l, job); !strings.Contains(got, "kiln: test report report.xml: 2 tests, 0 failed") {
		t.Fatalf("log %q: want the report line", got)
	}
	ts := done.GetTests()
	if ts.GetTotal() != 2 || ts.GetPassed() != 2 || ts.GetFailed() != 0 || ts.GetFlaky() != 1 || ts.GetDurationMs() != 1500 {
		t.Fatalf("build tests %v", ts)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var lt *kilnv1.ListTestsResponse
	var ft *kilnv1.FlakyTestsResponse
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		var err error
		if lt, err = cc.ListTests(ctx, &kilnv1.ListTestsRequest{BuildId: b.GetId()}); err != nil {
			return err
		}
		ft, err = cc.FlakyTests(ctx, &kilnv1.FlakyTestsRequest{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(lt.GetReports()) != 1 || lt.GetReports()[0].GetAttempt() != 2 || len(lt.GetReports()[0].GetCases()) != 2 || lt.GetSummary().GetFlaky() != 1 {
		t.Fatalf("ListTests %v", lt)
	}
	if f := lt.GetFlaky(); len(f) != 1 || f[0].GetName() != "shaky" || f[0].GetClassname() != "pkg.T" || f[0].GetLastBuildId() != b.GetId() {
		t.Fatalf("ListTests flaky %v, want pkg.T shaky", f)
	}
	if len(ft.GetTests()) != 1 || ft.GetTests()[0].GetName() != "shaky" || ft.GetTests()[0].GetFlakyBuilds() != 1 || ft.GetTests()[0].GetBuilds() != 1 || ft.GetTests()[0].GetLastBuildId() != b.GetId() {
		t.Fatalf("FlakyTests %v", ft)
	}
}
