// Package deploy is the leader's deployment controller: it runs deploy
// steps as rollouts over the agents of an environment. Every transition is
// a Raft command (StartDeployment, UpdateDeployment) carrying the whole
// next record and the jobs of the host actions it starts, so a new leader
// resumes from the replicated record: nothing of a rollout lives only in
// the leader's memory. Each host action is an ordinary job pinned to its
// agent (StepSpec.pin_agent), dispatched, fenced and logged like any other.
//
// Host phases: pending → deploying → healthy | failed; canary and
// blue_green re-run health (verifying → healthy | failed); on a failure
// every updated host, newest first and one at a time, goes rolling_back →
// rolled_back | rollback_failed. Deployment phases: deploying → verifying
// → (switching) → done, or rolling_back → done. Outcome: succeeded,
// rolled_back (every rollback passed), or failed.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	"github.com/kiln-ci/kiln/internal/pipeline"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Host phases.
const (
	HostPending        = "pending"
	HostDeploying      = "deploying"
	HostHealthy        = "healthy"
	HostFailed         = "failed"
	HostVerifying      = "verifying"
	HostSwitching      = "switching"
	HostRollingBack    = "rolling_back"
	HostRolledBack     = "rolled_back"
	HostRollbackFailed = "rollback_failed"
)

// Deployment phases.
const (
	PhaseDeploying   = "deploying"
	PhaseVerifying   = "verifying"
	PhaseSwitching   = "switching"
	PhaseRollingBack = "rolling_back"
)

// VersionEnv is the build variable that names the version a deploy step
// deploys when the build has no git commit (rollback builds set it).
const VersionEnv = "KILN_DEPLOY_VERSION"

// EnvLabel is the agent label naming an agent's environment.
const EnvLabel = "env"

// Applier commits commands (raftnode.Node).
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
}

// Controller drives the deployments while this node leads.
type Controller struct {
	store *state.Store
	raft  Applier
	log   *zap.Logger
	// Now is the clock of command timestamps and verify waits.
	Now func() time.Time
	// Tick bounds the wait between passes (verify timers); default 200ms.
	Tick time.Duration
	// AgentGrace is how long a target may stay disconnected, with its
	// action still waiting for it, before the host counts as failed
	// (the coordinator passes its agent lease TTL); a lost agent fails at
	// once. Default 30s.
	AgentGrace time.Duration
}

// New returns a controller.
func New(store *state.Store, raft Applier, log *zap.Logger) *Controller {
	return &Controller{store: store, raft: raft, log: log, Now: time.Now, Tick: 200 * time.Millisecond, AgentGrace: 30 * time.Second}
}

// Run drives deployments until ctx ends (leadership lost). It passes over
// the state at every change of a job or agent (the store's dispatch
// signal: action jobs ending, deploy steps queued) and at least every
// Tick (verify waits, record-only changes).
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.Tick)
	defer t.Stop()
	for {
		changed := c.store.DispatchChanged()
		if err := c.pass(ctx); err != nil {
			if errors.Is(err, raftnode.ErrNotLeader) || errors.Is(err, raftnode.ErrOutcomeUnknown) {
				c.log.Warn("deploy controller: leadership lost", zap.Error(err))
				<-ctx.Done()
				return
			}
			if ctx.Err() != nil {
				return
			}
			c.log.Error("deploy controller pass failed", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// pass advances every running deployment, then starts queued deploy steps
// of environments that have none running (lowest queue position first).
func (c *Controller) pass(ctx context.Context) error {
	busy := map[string]bool{}
	for _, d := range c.store.ActiveDeployments() {
		busy[d.GetEnvironment()] = true
		if err := c.advance(ctx, d); err != nil {
			return err
		}
	}
	for _, j := range c.store.QueuedDeploySteps() {
		ds := j.GetSpec().GetDeploy()
		if busy[ds.GetEnvironment()] {
			continue
		}
		busy[ds.GetEnvironment()] = true
		if err := c.start(ctx, j); err != nil {
			return err
		}
	}
	return nil
}

func (c *Controller) apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) error {
	_, err := c.raft.Apply(ctx, t, msg)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raftnode.ErrNotLeader), errors.Is(err, raftnode.ErrOutcomeUnknown), ctx.Err() != nil:
		return err
	}
	// A rejection means the state moved under us; the next pass
	// recomputes from it.
	c.log.Warn("deployment command rejected", zap.Stringer("type", t), zap.Error(err))
	return nil
}

// start records the deployment of a queued deploy step and its first
// actions.
func (c *Controller) start(ctx context.Context, j *kilnv1.Job) error {
	ds := j.GetSpec().GetDeploy()
	b, _ := c.store.BuildHeader(j.GetBuildId())
	now := c.Now()
	d := &kilnv1.Deployment{
		Id:            fmt.Sprintf("%s.%s.%d", j.GetBuildId(), j.GetKey(), c.store.JobDeployments(j.GetId())+1),
		Environment:   ds.GetEnvironment(),
		BuildId:       j.GetBuildId(),
		Step:          j.GetKey(),
		JobId:         j.GetId(),
		Version:       b.GetSource().GetCommit(),
		Strategy:      ds.GetStrategy(),
		StartedBy:     b.GetSubmitter(),
		ApprovedBy:    c.approvers(j),
		StartedUnixMs: now.UnixMilli(),
		Phase:         PhaseDeploying,
		Spec:          ds,
		Source:        b.GetSource(),
	}
	if d.Version == "" {
		d.Version = b.GetEnv()[VersionEnv]
	}
	if d.Version == "" {
		d.Version = "build-" + j.GetBuildId()
	}
	selector := map[string]string{EnvLabel: ds.GetEnvironment()}
	if ds.GetStrategy() == pipeline.StrategyBlueGreen {
		d.Color = c.nextColor(ds.GetEnvironment())
		selector = ds.GetBlueGreen().GetBlue()
		if d.Color == "green" {
			selector = ds.GetBlueGreen().GetGreen()
		}
	}
	var names []string
	for _, a := range c.store.Agents() {
		if a.GetState() != kilnv1.AgentState_AGENT_STATE_LOST && scheduler.Matches(selector, a.GetLabels()) {
			names = append(names, a.GetName())
		}
	}
	slices.Sort(names)
	size := batchSize(ds, len(names))
	for i, n := range names {
		batch := int32(0)
		switch ds.GetStrategy() {
		case pipeline.StrategyRolling:
			batch = int32(i / size)
		case pipeline.StrategyCanary:
			if i >= size {
				batch = 1
			}
		}
		d.Hosts = append(d.Hosts, &kilnv1.DeployHost{Agent: n, Batch: batch, Phase: HostPending})
	}
	var actions []*fsmv1.DeployAction
	if len(names) == 0 {
		d.Outcome = state.DeployFailed
		d.Reason = fmt.Sprintf("no agents match %s", formatSelector(selector))
	} else {
		actions = c.nextBatch(d, now)
	}
	c.log.Info("deployment starting", zap.String("deployment", d.GetId()), zap.String("environment", d.GetEnvironment()),
		zap.String("strategy", d.GetStrategy()), zap.Strings("hosts", names))
	return c.apply(ctx, fsmv1.CommandType_COMMAND_TYPE_START_DEPLOYMENT,
		&fsmv1.StartDeployment{Deployment: d, Actions: actions, TimeUnixMs: now.UnixMilli()})
}

// approvers names who approved the gates the deploy step needs.
func (c *Controller) approvers(j *kilnv1.Job) string {
	var by []string
	for _, k := range j.GetSpec().GetNeeds() {
		if n, ok := c.store.Job(j.GetBuildId() + "." + k); ok && n.GetApproval().GetApproved() {
			by = append(by, n.GetApproval().GetBy())
		}
	}
	return strings.Join(by, ",")
}

// nextColor is the blue_green color to deploy: the one the environment's
// last succeeded deployment did not go to (green when there is none, blue
// being taken as live).
func (c *Controller) nextColor(env string) string {
	for _, d := range c.store.Deployments(env, 0) {
		if d.GetOutcome() == state.DeploySucceeded && d.GetColor() != "" {
			if d.GetColor() == "green" {
				return "blue"
			}
			return "green"
		}
	}
	return "green"
}

func formatSelector(sel map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}

// batchSize is the hosts per batch: deploy.batch, or batch_percent of n
// rounded up, at least 1. all_at_once and blue_green take every host.
func batchSize(ds *kilnv1.DeploySpec, n int) int {
	switch ds.GetStrategy() {
	case pipeline.StrategyAllAtOnce, pipeline.StrategyBlueGreen:
		return max(n, 1)
	}
	if p := int(ds.GetBatchPercent()); p > 0 {
		return max((n*p+99)/100, 1)
	}
	return max(int(ds.GetBatch()), 1)
}

// action builds one host action and points the host at its job.
func (c *Controller) action(d *kilnv1.Deployment, h *kilnv1.DeployHost, kind string, cmds []string, phase string, now time.Time) *fsmv1.DeployAction {
	idx := slices.Index(d.GetHosts(), h) + 1
	n := strings.LastIndex(d.GetId(), ".")
	key := fmt.Sprintf("%s.%s.%s.%d", d.GetStep(), d.GetId()[n+1:], kind, idx)
	env := map[string]string{}
	if j, ok := c.store.Job(d.GetJobId()); ok {
		maps.Copy(env, j.GetSpec().GetEnv()) // the deploy step's env:
	}
	env["KILN_AGENT_NAME"] = h.GetAgent()
	env["KILN_DEPLOY_ENV"] = d.GetEnvironment()
	env["KILN_DEPLOY_ID"] = d.GetId()
	env["KILN_DEPLOY_STRATEGY"] = d.GetStrategy()
	env["KILN_DEPLOY_ACTION"] = kind
	env[VersionEnv] = d.GetVersion()
	if d.GetColor() != "" {
		env["KILN_DEPLOY_COLOR"] = d.GetColor()
	}
	h.JobId = d.GetBuildId() + "." + key
	h.Phase = phase
	h.UpdatedUnixMs = now.UnixMilli()
	return &fsmv1.DeployAction{
		Key:      key,
		Name:     fmt.Sprintf("%s: %s on %s", d.GetStep(), kind, h.GetAgent()),
		Agent:    h.GetAgent(),
		Commands: slices.Clone(cmds),
		Env:      env,
	}
}

// nextBatch starts the lowest batch that still has pending hosts.
func (c *Controller) nextBatch(d *kilnv1.Deployment, now time.Time) []*fsmv1.DeployAction {
	batch := int32(-1)
	for _, h := range d.GetHosts() {
		if h.GetPhase() == HostPending && (batch < 0 || h.GetBatch() < batch) {
			batch = h.GetBatch()
		}
	}
	if batch < 0 {
		return nil
	}
	order := int32(0)
	for _, h := range d.GetHosts() {
		order = max(order, h.GetOrder())
	}
	cmds := append(slices.Clone(d.GetSpec().GetCommands()), d.GetSpec().GetHealth()...)
	var out []*fsmv1.DeployAction
	for _, h := range d.GetHosts() {
		if h.GetPhase() == HostPending && h.GetBatch() == batch {
			order++
			h.Order = order
			out = append(out, c.action(d, h, "deploy", cmds, HostDeploying, now))
		}
	}
	return out
}

// neverRuns reports whether an action job waits for an agent that is
// gone (lost, or disconnected for longer than AgentGrace): it was never
// assigned and nobody else may take it (it is pinned).
func (c *Controller) neverRuns(j *kilnv1.Job) bool {
	if j.GetState() != kilnv1.JobState_JOB_STATE_QUEUED {
		return false
	}
	a, ok := c.store.Agent(j.GetSpec().GetPinAgent())
	switch {
	case !ok || a.GetState() == kilnv1.AgentState_AGENT_STATE_LOST:
		return true
	case a.GetState() == kilnv1.AgentState_AGENT_STATE_DISCONNECTED:
		return c.Now().Sub(time.UnixMilli(a.GetDisconnectedUnixMs())) > c.AgentGrace
	}
	return false
}

// running reports whether a host has an action in flight.
func running(phase string) bool {
	switch phase {
	case HostDeploying, HostVerifying, HostSwitching, HostRollingBack:
		return true
	}
	return false
}

// advance computes the next record of d; it commits only when something
// changed.
func (c *Controller) advance(ctx context.Context, cur *kilnv1.Deployment) error {
	d := proto.Clone(cur).(*kilnv1.Deployment)
	now := c.Now()
	changed := false
	// 1. Collect the results of finished actions.
	busy := false
	for _, h := range d.GetHosts() {
		if !running(h.GetPhase()) {
			continue
		}
		j, ok := c.store.Job(h.GetJobId())
		if ok && c.neverRuns(j) {
			// Its agent is lost and the action never reached it: the host
			// was not touched, so it needs no rollback (order 0). The job
			// is skipped when the deployment ends.
			if h.Result != "" {
				h.Result += "; "
			}
			h.Result += actionOf(h.GetPhase()) + ": agent lost before it ran"
			switch h.GetPhase() {
			case HostRollingBack:
				h.Phase = HostRollbackFailed
			case HostDeploying:
				h.Phase = HostFailed
				h.Order = 0 // never updated: nothing to roll back
			default:
				h.Phase = HostFailed
			}
			h.UpdatedUnixMs = now.UnixMilli()
			changed = true
			continue
		}
		if !ok || !lifecycle.JobFinished(j.GetState()) {
			busy = true
			continue
		}
		ok = j.GetState() == kilnv1.JobState_JOB_STATE_PASSED
		// The result keeps every action's outcome: "deploy: passed;
		// rollback: passed".
		if h.Result != "" {
			h.Result += "; "
		}
		h.Result += actionOf(h.GetPhase()) + ": " + describe(j)
		switch h.GetPhase() {
		case HostRollingBack:
			h.Phase = HostRolledBack
			if !ok {
				h.Phase = HostRollbackFailed
			}
		default:
			h.Phase = HostHealthy
			if !ok {
				h.Phase = HostFailed
			}
		}
		h.UpdatedUnixMs = now.UnixMilli()
		changed = true
	}
	var actions []*fsmv1.DeployAction
	finish := func(outcome, reason string) {
		d.Outcome = outcome
		if d.Reason == "" || outcome == state.DeploySucceeded {
			d.Reason = reason
		} else if reason != "" {
			d.Reason += "; " + reason
		}
		changed = true
	}
	// 2. The deploy step ended without us (its build was canceled).
	if j, ok := c.store.Job(d.GetJobId()); !ok || lifecycle.JobFinished(j.GetState()) {
		finish(state.DeployFailed, "the deploy step ended: "+describe(j))
		busy = true // no new actions
	}
	// 3. A failure turns the rollout into a rollback.
	if d.GetOutcome() == "" && d.GetPhase() != PhaseRollingBack {
		for _, h := range d.GetHosts() {
			if h.GetPhase() == HostFailed {
				d.Phase = PhaseRollingBack
				last := h.GetResult()
				if i := strings.LastIndex(last, "; "); i >= 0 {
					last = last[i+2:]
				}
				d.Reason = fmt.Sprintf("host %s failed: %s", h.GetAgent(), last)
				changed = true
				break
			}
		}
	}
	if d.GetOutcome() == "" && !busy {
		switch d.GetPhase() {
		case PhaseRollingBack:
			actions = c.rollback(d, now, finish)
		case PhaseDeploying:
			actions = c.rollout(d, now, finish)
		case PhaseVerifying:
			actions = c.verify(d, now, finish)
		case PhaseSwitching:
			if !d.GetSwitchStarted() {
				d.SwitchStarted = true
				actions = append(actions, c.action(d, d.GetHosts()[0], "switch", d.GetSpec().GetBlueGreen().GetSwitch(), HostSwitching, now))
			} else {
				finish(state.DeploySucceeded, fmt.Sprintf("switched to %s", d.GetColor()))
			}
		}
		if len(actions) > 0 {
			changed = true
		}
	}
	if !changed && proto.Equal(d, cur) {
		return nil
	}
	if d.GetOutcome() != "" {
		c.log.Info("deployment finished", zap.String("deployment", d.GetId()), zap.String("outcome", d.GetOutcome()), zap.String("reason", d.GetReason()))
	}
	return c.apply(ctx, fsmv1.CommandType_COMMAND_TYPE_UPDATE_DEPLOYMENT,
		&fsmv1.UpdateDeployment{Deployment: d, Actions: actions, TimeUnixMs: now.UnixMilli()})
}

// rollout starts the next batch, or the verification, switch or success
// that follows the batch just finished.
func (c *Controller) rollout(d *kilnv1.Deployment, now time.Time, finish func(string, string)) []*fsmv1.DeployAction {
	verifies := d.GetStrategy() == pipeline.StrategyCanary || d.GetStrategy() == pipeline.StrategyBlueGreen
	if verifies && !d.GetVerified() {
		// canary: after the first batch; blue_green: after every host.
		pending := false
		for _, h := range d.GetHosts() {
			if h.GetPhase() == HostPending && (d.GetStrategy() == pipeline.StrategyBlueGreen || h.GetBatch() == 0) {
				pending = true
			}
		}
		if !pending {
			d.Phase = PhaseVerifying
			d.VerifyUntilUnixMs = now.Add(time.Duration(d.GetSpec().GetVerifyMs()) * time.Millisecond).UnixMilli()
			return nil
		}
	}
	if acts := c.nextBatch(d, now); len(acts) > 0 {
		return acts
	}
	if d.GetStrategy() == pipeline.StrategyBlueGreen && len(d.GetSpec().GetBlueGreen().GetSwitch()) > 0 {
		d.Phase = PhaseSwitching
		return nil
	}
	finish(state.DeploySucceeded, fmt.Sprintf("%d hosts updated", len(d.GetHosts())))
	return nil
}

// verify waits out deploy.verify, then re-runs health on the hosts
// updated so far; once they pass, the rollout goes on.
func (c *Controller) verify(d *kilnv1.Deployment, now time.Time, finish func(string, string)) []*fsmv1.DeployAction {
	if now.UnixMilli() < d.GetVerifyUntilUnixMs() {
		return nil
	}
	health := d.GetSpec().GetHealth()
	if !d.GetVerifyStarted() && len(health) > 0 {
		d.VerifyStarted = true
		var out []*fsmv1.DeployAction
		for _, h := range d.GetHosts() {
			if h.GetPhase() == HostHealthy {
				out = append(out, c.action(d, h, "verify", health, HostVerifying, now))
			}
		}
		return out
	}
	d.Verified = true
	d.Phase = PhaseDeploying
	return c.rollout(d, now, finish)
}

// rollback runs the rollback commands on the next updated host, newest
// first, and finishes once every updated host was rolled back.
func (c *Controller) rollback(d *kilnv1.Deployment, now time.Time, finish func(string, string)) []*fsmv1.DeployAction {
	cmds := d.GetSpec().GetRollback()
	var next *kilnv1.DeployHost
	failed := 0
	for _, h := range d.GetHosts() {
		switch h.GetPhase() {
		case HostHealthy, HostFailed:
			if h.GetOrder() > 0 && (next == nil || h.GetOrder() > next.GetOrder()) {
				next = h
			}
		case HostRollbackFailed:
			failed++
		}
	}
	switch {
	case len(cmds) == 0:
		finish(state.DeployFailed, "no rollback commands: the updated hosts were left as they are")
	case next != nil:
		return []*fsmv1.DeployAction{c.action(d, next, "rollback", cmds, HostRollingBack, now)}
	case failed > 0:
		finish(state.DeployFailed, fmt.Sprintf("%d rollbacks failed", failed))
	default:
		finish(state.DeployRolledBack, "")
	}
	return nil
}

// actionOf names the action a host phase runs.
func actionOf(phase string) string {
	switch phase {
	case HostVerifying:
		return "verify"
	case HostSwitching:
		return "switch"
	case HostRollingBack:
		return "rollback"
	}
	return "deploy"
}

// describe says how a job ended, for a host's result.
func describe(j *kilnv1.Job) string {
	if j == nil {
		return "missing"
	}
	s := strings.TrimPrefix(strings.ToLower(j.GetState().String()), "job_state_")
	if r := j.GetReason(); r != "" {
		s += ": " + r
	}
	return s
}
