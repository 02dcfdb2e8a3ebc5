package deploy

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ErrNoRollbackTarget: the environment has no succeeded deployment of
// another version to go back to.
var ErrNoRollbackTarget = errors.New("nothing to roll back to")

// RollbackTarget picks the deployment whose version `kilnctl rollback ENV`
// redeploys: when the newest deployment succeeded (its version is live),
// the newest succeeded deployment of a different version; otherwise (the
// newest failed or was rolled back) the newest succeeded one.
func RollbackTarget(store *state.Store, env string) (*kilnv1.Deployment, error) {
	all := store.Deployments(env, 0)
	if len(all) == 0 {
		return nil, fmt.Errorf("environment %q has no deployments: %w", env, ErrNoRollbackTarget)
	}
	live := ""
	if all[0].GetOutcome() == state.DeploySucceeded {
		live = all[0].GetVersion()
	}
	for _, d := range all {
		if d.GetOutcome() == state.DeploySucceeded && d.GetVersion() != live {
			return d, nil
		}
	}
	if live != "" {
		return nil, fmt.Errorf("environment %q: every succeeded deployment is of the live version %s: %w", env, live, ErrNoRollbackTarget)
	}
	return nil, fmt.Errorf("environment %q has no succeeded deployment: %w", env, ErrNoRollbackTarget)
}

// RollbackBuild is the SubmitBuild command of a rollback: a new build,
// from the target's pinned source and build environment, whose only step
// is the target's deploy step (without needs, so without the artifacts of
// the original build's earlier steps). It runs like any deploy step: one
// deployment at a time per environment, recorded with its own outcome.
func RollbackBuild(store *state.Store, target *kilnv1.Deployment, by, requestID string, now time.Time) (*fsmv1.SubmitBuild, error) {
	j, ok := store.Job(target.GetJobId())
	if !ok || j.GetSpec().GetDeploy() == nil {
		return nil, fmt.Errorf("deployment %s: its deploy step %s is gone: %w", target.GetId(), target.GetJobId(), ErrNoRollbackTarget)
	}
	b, _ := store.BuildHeader(target.GetBuildId())
	spec := proto.Clone(j.GetSpec()).(*kilnv1.StepSpec)
	spec.Needs = nil
	spec.ArtifactsFrom = nil
	spec.Stage = 0
	spec.SkipReason = ""
	cmd := &fsmv1.SubmitBuild{
		RequestId:  requestID,
		Name:       fmt.Sprintf("rollback %s to %s", target.GetEnvironment(), target.GetVersion()),
		Submitter:  by,
		Env:        maps.Clone(b.GetEnv()),
		Steps:      []*kilnv1.StepSpec{spec},
		TimeUnixMs: now.UnixMilli(),
		Event:      "rollback",
	}
	if cmd.Env == nil {
		cmd.Env = map[string]string{}
	}
	// The redeployed version keeps its name even without a git commit.
	cmd.Env[VersionEnv] = target.GetVersion()
	if src := target.GetSource(); src != nil {
		cmd.Source = proto.Clone(src).(*kilnv1.Source)
	}
	return cmd, nil
}
