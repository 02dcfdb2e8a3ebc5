package deploy

import (
	"errors"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestBatchSize(t *testing.T) {
	for _, c := range []struct {
		strategy       string
		batch, percent int32
		n, want        int
	}{
		{"rolling", 0, 0, 5, 1},
		{"rolling", 2, 0, 5, 2},
		{"rolling", 0, 50, 5, 3}, // rounded up
		{"rolling", 0, 1, 5, 1},  // at least one
		{"canary", 0, 25, 4, 1},
		{"all_at_once", 1, 0, 7, 7},
		{"blue_green", 1, 0, 3, 3},
		{"all_at_once", 0, 0, 0, 1},
	} {
		ds := &kilnv1.DeploySpec{Strategy: c.strategy, Batch: c.batch, BatchPercent: c.percent}
		if got := batchSize(ds, c.n); got != c.want {
			t.Errorf("batchSize(%s batch=%d pct=%d, %d hosts) = %d, want %d", c.strategy, c.batch, c.percent, c.n, got, c.want)
		}
	}
}

// record commits a finished deployment of version v with outcome o.
func record(t *testing.T, s *state.Store, idx uint64, v, outcome string) {
	t.Helper()
	b, err := s.SubmitBuild(idx, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{Key: "ship", Retry: &kilnv1.RetryPolicy{},
		Deploy: &kilnv1.DeploySpec{Environment: "prod", Strategy: "rolling", Commands: []string{"x"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	d := &kilnv1.Deployment{Id: b.Id + ".ship.1", Environment: "prod", BuildId: b.Id, Step: "ship", JobId: b.Jobs[0].Id,
		Version: v, StartedUnixMs: int64(idx)}
	if _, err := s.StartDeployment(idx+1, &fsmv1.StartDeployment{Deployment: d, TimeUnixMs: int64(idx)}); err != nil {
		t.Fatal(err)
	}
	d.Outcome = outcome
	if _, err := s.UpdateDeployment(idx+2, &fsmv1.UpdateDeployment{Deployment: d, TimeUnixMs: int64(idx)}); err != nil {
		t.Fatal(err)
	}
}

func TestRollbackTarget(t *testing.T) {
	s := state.New()
	if _, err := RollbackTarget(s, "prod"); !errors.Is(err, ErrNoRollbackTarget) {
		t.Fatalf("no deployments: %v", err)
	}
	record(t, s, 10, "v1", state.DeploySucceeded)
	if _, err := RollbackTarget(s, "prod"); !errors.Is(err, ErrNoRollbackTarget) {
		t.Fatalf("only the live version: %v", err)
	}
	record(t, s, 20, "v2", state.DeploySucceeded)
	if d, err := RollbackTarget(s, "prod"); err != nil || d.GetVersion() != "v1" {
		t.Fatalf("v2 live: target %v, %v; want v1", d, err)
	}
	// v3 was rolled back: v2 is still live and is what a rollback redeploys.
	record(t, s, 30, "v3", state.DeployRolledBack)
	d, err := RollbackTarget(s, "prod")
	if err != nil || d.GetVersion() != "v2" {
		t.Fatalf("after a rolled back v3: target %v, %v; want v2", d, err)
	}
	cmd, err := RollbackBuild(s, d, "alice", "r1", d2time(40))
	if err != nil {
		t.Fatal(err)
	}
	if len(cmd.Steps) != 1 || cmd.Steps[0].GetDeploy() == nil || cmd.Steps[0].GetNeeds() != nil || cmd.Env[VersionEnv] != "v2" || cmd.Submitter != "alice" || cmd.Event != "rollback" {
		t.Fatalf("rollback build: %v", cmd)
	}
}

func d2time(ms int64) time.Time { return time.UnixMilli(ms) }
