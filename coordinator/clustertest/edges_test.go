package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// streamAttempt reads the whole log of one attempt of job key through the
// API (StreamLogsRequest.attempt).
func streamAttempt(t *testing.T, c *Cluster, build, key string, attempt uint32) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var buf bytes.Buffer
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		buf.Reset()
		s, err := cc.StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: build, JobKey: key, Attempt: attempt})
		if err != nil {
			return err
		}
		for {
			m, err := s.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if m.GetAttempt() != attempt {
				return fmt.Errorf("chunk of attempt %d", m.GetAttempt())
			}
			buf.Write(m.GetData())
		}
	})
	return buf.String(), err
}

// TestEveryAttemptsLogIsReachable: a step retried on failure keeps each
// attempt's log, served by attempt number.
func TestEveryAttemptsLogIsReachable(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	counter := filepath.Join(t.TempDir(), "runs")
	spec := fmt.Sprintf("steps:\n  - key: flaky\n    retry: {on_failure: 2}\n    commands: [\"echo x >> %s; echo run $(wc -l < %s)\", \"[ $(wc -l < %s) -ge 3 ]\"]\n",
		counter, counter, counter)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "f.yaml"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || done.GetJobs()[0].GetAttempt() != 3 {
		t.Fatalf("build %s, attempt %d", done.GetState(), done.GetJobs()[0].GetAttempt())
	}
	for a := uint32(1); a <= 3; a++ {
		got, err := streamAttempt(t, c, b.GetId(), "flaky", a)
		if err != nil {
			t.Fatalf("attempt %d: %v", a, err)
		}
		if want := fmt.Sprintf("run %d\n", a); got != want {
			t.Errorf("attempt %d log %q, want %q", a, got, want)
		}
	}
	if _, err := streamAttempt(t, c, b.GetId(), "flaky", 4); status.Code(err) != codes.NotFound {
		t.Errorf("attempt 4: %v, want NotFound", err)
	}
}
