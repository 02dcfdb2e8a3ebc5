package state

import (
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func deployBuild(t *testing.T, s *Store, idx uint64, env string) *kilnv1.Build {
	t.Helper()
	b, err := s.SubmitBuild(idx, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{
		Key: "ship", Retry: &kilnv1.RetryPolicy{},
		Deploy: &kilnv1.DeploySpec{Environment: env, Strategy: "rolling", Commands: []string{"deploy"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeploymentLifecycle(t *testing.T) {
	s := New()
	b := deployBuild(t, s, 1, "staging")
	jobID := b.Jobs[0].Id
	if j, _ := s.Job(jobID); j.State != jQueued {
		t.Fatalf("deploy job is %s, want queued", j.State)
	}
	d := &kilnv1.Deployment{Id: b.Id + ".ship.1", Environment: "staging", BuildId: b.Id, Step: "ship", JobId: jobID,
		Hosts: []*kilnv1.DeployHost{{Agent: "s1", Phase: "deploying", JobId: b.Id + ".ship.1.deploy.1", Order: 1}}}
	act := &fsmv1.DeployAction{Key: "ship.1.deploy.1", Agent: "s1", Commands: []string{"deploy"}, Env: map[string]string{"KILN_DEPLOY_ENV": "staging"}}
	if _, err := s.StartDeployment(2, &fsmv1.StartDeployment{Deployment: d, Actions: []*fsmv1.DeployAction{act}, TimeUnixMs: 10}); err != nil {
		t.Fatal(err)
	}
	j, _ := s.Job(jobID)
	a, ok := s.Job(b.Id + ".ship.1.deploy.1")
	if j.State != jRunning || !ok || a.State != jQueued || a.Spec.PinAgent != "s1" || !a.Spec.AllowFailure || a.Spec.Env["KILN_DEPLOY_ENV"] != "staging" {
		t.Fatalf("after start: deploy job %v, action %v", j, a)
	}

	// A second deployment of the same environment is refused while this
	// one runs, and changes nothing.
	b2 := deployBuild(t, s, 3, "staging")
	d2 := &kilnv1.Deployment{Id: b2.Id + ".ship.1", Environment: "staging", BuildId: b2.Id, Step: "ship", JobId: b2.Jobs[0].Id}
	if _, err := s.StartDeployment(4, &fsmv1.StartDeployment{Deployment: d2}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("second deployment of staging: %v, want ErrInvalidState", err)
	}
	if j2, _ := s.Job(b2.Jobs[0].Id); j2.State != jQueued || len(s.Deployments("staging", 0)) != 1 {
		t.Fatalf("refused start changed state: %v", j2)
	}
	// Bad updates change nothing.
	bad := proto.Clone(d).(*kilnv1.Deployment)
	bad.Environment = "prod"
	if _, err := s.UpdateDeployment(5, &fsmv1.UpdateDeployment{Deployment: bad}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("update moving the environment: %v", err)
	}
	bad = proto.Clone(d).(*kilnv1.Deployment)
	bad.Outcome = "maybe"
	if _, err := s.UpdateDeployment(6, &fsmv1.UpdateDeployment{Deployment: bad}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("unknown outcome: %v", err)
	}
	dup := &fsmv1.UpdateDeployment{Deployment: d, Actions: []*fsmv1.DeployAction{act}}
	if _, err := s.UpdateDeployment(7, dup); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("an action job created twice: %v", err)
	}

	// The action fails; the deployment ends failed, the deploy job fails,
	// the build fails because of the deploy step (not the action, which
	// may fail).
	if err := s.AssignJob(8, &fsmv1.AssignJob{JobId: a.Id, Attempt: 1, Agent: "s1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FinishJob(9, &fsmv1.FinishJob{Agent: "s1", Finished: &kilnv1.JobFinished{JobId: a.Id, Attempt: 1, ExitCode: 1, Result: kilnv1.JobResult_JOB_RESULT_FAILED}}); err != nil {
		t.Fatal(err)
	}
	done := proto.Clone(d).(*kilnv1.Deployment)
	done.Hosts[0].Phase = "failed"
	done.Outcome = DeployFailed
	done.Reason = "host s1 failed"
	if _, err := s.UpdateDeployment(10, &fsmv1.UpdateDeployment{Deployment: done, TimeUnixMs: 20}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Build(b.Id)
	if got.State != bFailed || got.Reason != "job ship failed" {
		t.Fatalf("build %s (%s), want failed by its deploy step", got.State, got.Reason)
	}
	if _, err := s.UpdateDeployment(11, &fsmv1.UpdateDeployment{Deployment: done}); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("update of a finished deployment: %v", err)
	}
	// Now the environment is free.
	if _, err := s.StartDeployment(12, &fsmv1.StartDeployment{Deployment: d2, TimeUnixMs: 30}); err != nil {
		t.Fatalf("next deployment: %v", err)
	}
	list := s.Deployments("staging", 0)
	if len(list) != 2 || list[0].Id != d2.Id || list[1].Outcome != DeployFailed || list[1].FinishedUnixMs != 20 {
		t.Fatalf("deployments newest first: %v", list)
	}

	// Deployments survive a snapshot.
	var recs []*fsmv1.SnapshotRecord
	if err := s.Snapshot().Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	s2 := New()
	i := 0
	if err := s2.Restore(func() (*fsmv1.SnapshotRecord, error) {
		if i == len(recs) {
			return nil, io.EOF
		}
		i++
		return recs[i-1], nil
	}); err != nil {
		t.Fatal(err)
	}
	restored := s2.Deployments("staging", 0)
	if len(restored) != 2 || !proto.Equal(restored[1], list[1]) || len(s2.ActiveDeployments()) != 1 {
		t.Fatalf("restored deployments %v", restored)
	}
}
