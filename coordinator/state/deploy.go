package state

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

const tableDeployments = "deployments"

// Deployment outcomes (Deployment.outcome); "" while it runs.
const (
	DeploySucceeded  = "succeeded"
	DeployFailed     = "failed"
	DeployRolledBack = "rolled_back"
)

// maxDeployActions bounds the jobs one deployment command creates.
const maxDeployActions = 1000

func deploymentTable() *memdb.TableSchema {
	return &memdb.TableSchema{Name: tableDeployments, Indexes: map[string]*memdb.IndexSchema{
		"id":  {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Id"}},
		"env": {Name: "env", Indexer: &memdb.StringFieldIndex{Field: "Environment"}},
		"job": {Name: "job", Indexer: &memdb.StringFieldIndex{Field: "JobId"}},
		// Unfinished deployments: the controller's work list.
		"active": {Name: "active", Indexer: &memdb.ConditionalIndex{Conditional: func(obj interface{}) (bool, error) {
			d, ok := obj.(*kilnv1.Deployment)
			if !ok {
				return false, fmt.Errorf("deployment index: unexpected %T", obj)
			}
			return d.GetOutcome() == "", nil
		}}},
	}}
}

// queuedDeployIndex indexes the QUEUED deploy steps (the deploy
// controller's intake), so finding them never scans the job queue.
func queuedDeployIndex() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: "deployq", Indexer: &memdb.ConditionalIndex{Conditional: func(obj interface{}) (bool, error) {
		j, ok := obj.(*kilnv1.Job)
		if !ok {
			return false, fmt.Errorf("deploy queue index: unexpected %T", obj)
		}
		return j.GetState() == jQueued && j.GetSpec().GetDeploy() != nil, nil
	}}}
}

// QueuedDeploySteps returns the QUEUED deploy steps in queue order.
func (s *Store) QueuedDeploySteps() []*kilnv1.Job {
	out := collectJobs(mustGet(s.read(), tableJobs, "deployq", true))
	slices.SortFunc(out, func(a, b *kilnv1.Job) int { return cmp.Compare(a.GetQueueIndex(), b.GetQueueIndex()) })
	return out
}

func getDeployment(tx *memdb.Txn, id string) *kilnv1.Deployment {
	raw := mustFirst(tx, tableDeployments, id)
	if raw == nil {
		return nil
	}
	return raw.(*kilnv1.Deployment)
}

func envDeployments(tx *memdb.Txn, env string) []*kilnv1.Deployment {
	var out []*kilnv1.Deployment
	it := mustGet(tx, tableDeployments, "env", env)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*kilnv1.Deployment))
	}
	// Newest first: by start time, then by build number and id.
	slices.SortFunc(out, func(a, b *kilnv1.Deployment) int {
		if c := cmp.Compare(b.GetStartedUnixMs(), a.GetStartedUnixMs()); c != 0 {
			return c
		}
		if c := cmp.Compare(len(b.GetBuildId()), len(a.GetBuildId())); c != 0 {
			return c
		}
		return strings.Compare(b.GetId(), a.GetId())
	})
	return out
}

// Deployments returns the deployments of env, newest first, at most limit
// (0: all).
func (s *Store) Deployments(env string, limit int) []*kilnv1.Deployment {
	out := envDeployments(s.read(), env)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Deployment returns one deployment.
func (s *Store) Deployment(id string) (*kilnv1.Deployment, bool) {
	d := getDeployment(s.read(), id)
	return d, d != nil
}

// ActiveDeployments returns the unfinished deployments.
func (s *Store) ActiveDeployments() []*kilnv1.Deployment {
	var out []*kilnv1.Deployment
	it := mustGet(s.read(), tableDeployments, "active", true)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*kilnv1.Deployment))
	}
	return out
}

// JobDeployments counts the deployments of a deploy step's job (the next
// one is numbered count+1).
func (s *Store) JobDeployments(jobID string) int {
	n := 0
	it := mustGet(s.read(), tableDeployments, "job", jobID)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	return n
}

// StartDeployment records a new deployment (see fsmv1.StartDeployment).
func (s *Store) StartDeployment(index uint64, cmd *fsmv1.StartDeployment) (*kilnv1.Deployment, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Deployment, error) {
		d := cmd.GetDeployment()
		if d.GetId() == "" || d.GetEnvironment() == "" {
			return nil, fmt.Errorf("start deployment: no id or environment: %w", ErrInvalidCommand)
		}
		if getDeployment(w.tx, d.GetId()) != nil {
			return nil, fmt.Errorf("start deployment %q: exists: %w", d.GetId(), ErrInvalidState)
		}
		it := mustGet(w.tx, tableDeployments, "active", true)
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if other := raw.(*kilnv1.Deployment); other.GetEnvironment() == d.GetEnvironment() {
				return nil, fmt.Errorf("start deployment %q: deployment %s of environment %s is still running: %w", d.GetId(), other.GetId(), d.GetEnvironment(), ErrInvalidState)
			}
		}
		j := w.job(d.GetJobId())
		if j == nil {
			return nil, fmt.Errorf("start deployment %q: job %q: %w", d.GetId(), d.GetJobId(), ErrNotFound)
		}
		if j.GetSpec().GetDeploy() == nil || j.GetState() != jQueued {
			return nil, fmt.Errorf("start deployment %q: job %s is %s, not a queued deploy step: %w", d.GetId(), j.GetId(), j.GetState(), ErrInvalidState)
		}
		now := cmd.GetTimeUnixMs()
		j = cloneJob(j)
		j.State = jRunning
		j.Attempt++
		j.StartedUnixMs = now
		j.Reason = "deploying to " + d.GetEnvironment()
		w.putJob(j)
		row := getBuildRow(w.tx, j.GetBuildId())
		if row != nil && (row.Build.GetState() == bQueued || row.Build.GetState() == bBlocked) {
			b := proto.Clone(row.Build).(*kilnv1.Build)
			b.State = bRunning
			if b.StartedUnixMs == 0 {
				b.StartedUnixMs = now
			}
			w.putBuild(row, b)
		}
		return w.saveDeployment(proto.Clone(d).(*kilnv1.Deployment), j, cmd.GetActions(), now)
	})
}

// UpdateDeployment replaces an unfinished deployment's record (see
// fsmv1.UpdateDeployment).
func (s *Store) UpdateDeployment(index uint64, cmd *fsmv1.UpdateDeployment) (*kilnv1.Deployment, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Deployment, error) {
		d := cmd.GetDeployment()
		old := getDeployment(w.tx, d.GetId())
		if old == nil {
			return nil, fmt.Errorf("update deployment %q: %w", d.GetId(), ErrNotFound)
		}
		if old.GetOutcome() != "" {
			return nil, fmt.Errorf("update deployment %q: already %s: %w", d.GetId(), old.GetOutcome(), ErrInvalidState)
		}
		if d.GetEnvironment() != old.GetEnvironment() || d.GetJobId() != old.GetJobId() || d.GetBuildId() != old.GetBuildId() {
			return nil, fmt.Errorf("update deployment %q: environment, build and job are fixed: %w", d.GetId(), ErrInvalidCommand)
		}
		j := w.job(d.GetJobId())
		if j == nil {
			return nil, fmt.Errorf("update deployment %q: job %q: %w", d.GetId(), d.GetJobId(), ErrNotFound)
		}
		return w.saveDeployment(proto.Clone(d).(*kilnv1.Deployment), j, cmd.GetActions(), cmd.GetTimeUnixMs())
	})
}

// saveDeployment creates the actions' jobs, stores d and, when d has an
// outcome, ends the deploy step's job j (unless it already ended, e.g.
// canceled with its build).
func (w *wtx) saveDeployment(d *kilnv1.Deployment, j *kilnv1.Job, actions []*fsmv1.DeployAction, now int64) (*kilnv1.Deployment, error) {
	switch d.GetOutcome() {
	case "", DeploySucceeded, DeployFailed, DeployRolledBack:
	default:
		return nil, fmt.Errorf("deployment %q: unknown outcome %q: %w", d.GetId(), d.GetOutcome(), ErrInvalidCommand)
	}
	if len(actions) > maxDeployActions {
		return nil, fmt.Errorf("deployment %q: %d actions: %w", d.GetId(), len(actions), ErrInvalidCommand)
	}
	row := getBuildRow(w.tx, j.GetBuildId())
	if row == nil {
		return nil, fmt.Errorf("deployment %q: build %q: %w", d.GetId(), j.GetBuildId(), ErrNotFound)
	}
	if len(actions) > 0 && !lifecycle.BuildFinished(row.Build.GetState()) {
		row = &buildRow{ID: row.ID, Build: row.Build, JobIDs: slices.Clone(row.JobIDs)}
		for _, a := range actions {
			if err := w.addActionJob(row, j, a, now); err != nil {
				return nil, fmt.Errorf("deployment %q: %w", d.GetId(), err)
			}
		}
		mustInsert(w.tx, tableBuilds, row)
	}
	if d.GetOutcome() != "" {
		d.FinishedUnixMs = now
		d.Phase = "done"
	}
	mustInsert(w.tx, tableDeployments, d)
	if d.GetOutcome() != "" {
		// An action that never reached its agent (e.g. the agent is gone)
		// must not keep the build open.
		for _, h := range d.GetHosts() {
			if aj := w.job(h.GetJobId()); aj != nil && (aj.GetState() == jQueued || aj.GetState() == jWaiting) {
				aj = cloneJob(aj)
				aj.State = jSkipped
				aj.Reason = "deployment " + d.GetId() + " ended " + d.GetOutcome()
				aj.FinishedUnixMs = now
				w.putJob(aj)
			}
		}
	}
	if d.GetOutcome() != "" && !lifecycle.JobFinished(j.GetState()) {
		j = cloneJob(j)
		j.FinishedUnixMs = now
		j.Reason = d.GetReason()
		if d.GetOutcome() == DeploySucceeded {
			j.State = jPassed
		} else {
			j.State = jFailed
			j.ExitCode = 1
		}
		w.putJob(j)
	}
	if d.GetOutcome() != "" {
		w.advance(j.GetBuildId(), now)
	}
	return d, nil
}

// addActionJob creates the QUEUED job of one host action, pinned to its
// agent. It inherits the deploy step's needs (so it receives their
// artifacts), artifact selection and timeout; allow_failure keeps a failed
// host from failing the build by itself: the deploy step's outcome does.
func (w *wtx) addActionJob(row *buildRow, deployJob *kilnv1.Job, a *fsmv1.DeployAction, now int64) error {
	if !keyPattern.MatchString(a.GetKey()) {
		return fmt.Errorf("action key %q does not match %s: %w", a.GetKey(), keyPattern, ErrInvalidCommand)
	}
	id := row.ID + "." + a.GetKey()
	if w.job(id) != nil {
		return fmt.Errorf("action job %q exists: %w", id, ErrInvalidState)
	}
	if a.GetAgent() == "" || len(a.GetCommands()) == 0 {
		return fmt.Errorf("action %q: no agent or no commands: %w", a.GetKey(), ErrInvalidCommand)
	}
	ds := deployJob.GetSpec()
	spec := &kilnv1.StepSpec{
		Key:           a.GetKey(),
		Name:          a.GetName(),
		Commands:      slices.Clone(a.GetCommands()),
		Env:           maps.Clone(a.GetEnv()),
		TimeoutMs:     ds.GetTimeoutMs(),
		Retry:         &kilnv1.RetryPolicy{},
		Stage:         ds.GetStage(),
		Needs:         slices.Clone(ds.GetNeeds()),
		AllowFailure:  true,
		ArtifactsFrom: ds.GetArtifactsFrom(),
		PinAgent:      a.GetAgent(),
	}
	name := a.GetName()
	if name == "" {
		name = a.GetKey()
	}
	w.putJob(&kilnv1.Job{
		Id:            id,
		BuildId:       row.ID,
		Key:           a.GetKey(),
		Name:          name,
		Stage:         ds.GetStage(),
		State:         jQueued,
		CreatedUnixMs: now,
		QueuedUnixMs:  now,
		QueueIndex:    w.index,
		Spec:          spec,
	})
	row.JobIDs = append(row.JobIDs, id)
	return nil
}
