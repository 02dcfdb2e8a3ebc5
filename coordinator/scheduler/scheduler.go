// Package scheduler is the leader-only part of the coordinator: it keeps
// the open agent sessions (their streams are run by package agentsession),
// hands queued jobs to agents with free slots and matching labels, and
// declares agents lost when their lease lapses.
//
// Everything here lives in the leader's memory and is rebuilt from the
// replicated state each time leadership is gained (after a Raft barrier):
// the dispatch order comes from the queue index of the jobs, and every agent
// known to the state gets one full lease TTL to reconnect before its jobs
// are declared lost. Every decision is committed through Raft before it is
// acted on, so a new leader never contradicts an old one.
package scheduler

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/glob"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Applier commits FSM commands; *raftnode.Node implements it.
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
	ApplyAsync(t fsmv1.CommandType, msg proto.Message) (raftnode.Pending, error)
}

// Config holds the scheduler's timing settings.
type Config struct {
	// LeaseTTL is how long an agent may stay silent before its jobs are
	// declared lost. A new leader gives every agent one full TTL.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often agents are told to send heartbeats.
	HeartbeatInterval time.Duration
	// DefaultJobTimeout applies to steps without a timeout.
	DefaultJobTimeout time.Duration
	// Now is the clock (tests may replace it).
	Now func() time.Time
	// Secrets opens the named secrets for a job of a build of repo: the
	// values by name, and the names it could not open (nil: no secrets).
	Secrets func(repo string, names []string) (values map[string]string, missing []string)
}

// Defaults fills zero fields.
func (c *Config) Defaults() {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.DefaultJobTimeout == 0 {
		c.DefaultJobTimeout = time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ErrNotActive is returned when a session is attached to a scheduler that
// is not running, i.e. on a node that is not (or not yet) the leader.
var ErrNotActive = errors.New("scheduler is not active on this node")

// Scheduler dispatches jobs to agent sessions. Create it once per node;
// Run it while the node is the leader.
type Scheduler struct {
	cfg   Config
	store *state.Store
	raft  Applier
	log   *zap.Logger
	kick  chan struct{}

	mu       sync.Mutex
	active   bool
	sessions map[string]*Session // by agent name
	leases   map[string]lease    // by agent name
	// unstarted tracks committed assignments until the agent reports the
	// start; one that stays unstarted for a lease TTL was never delivered.
	unstarted map[string]unstarted // by job id
}

type unstarted struct {
	attempt  uint32
	deadline time.Time
}

type lease struct {
	sessionID string
	deadline  time.Time
}

// New returns an inactive scheduler.
func New(cfg Config, store *state.Store, raft Applier, log *zap.Logger) *Scheduler {
	cfg.Defaults()
	return &Scheduler{
		cfg:       cfg,
		store:     store,
		raft:      raft,
		log:       log,
		kick:      make(chan struct{}, 1),
		sessions:  map[string]*Session{},
		leases:    map[string]lease{},
		unstarted: map[string]unstarted{},
	}
}

// Config returns the effective settings.
func (s *Scheduler) Config() Config { return s.cfg }

// Active reports whether the scheduler is running (this node leads).
func (s *Scheduler) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// Run is the leader loop. Call it after a Raft barrier once leadership is
// gained; it returns when ctx is canceled (leadership lost or shutdown),
// closing every session so agents reconnect to the next leader.
func (s *Scheduler) Run(ctx context.Context) {
	now := s.cfg.Now()
	s.mu.Lock()
	s.active = true
	for _, a := range s.store.Agents() {
		if a.GetState() == kilnv1.AgentState_AGENT_STATE_LOST {
			continue
		}
		// Failover TTL: later than the old leader would have expired it is
		// allowed, earlier is not.
		s.leases[a.GetName()] = lease{sessionID: a.GetSessionId(), deadline: now.Add(s.cfg.LeaseTTL)}
	}
	for _, j := range s.store.ActiveJobs() {
		if j.GetState() == kilnv1.JobState_JOB_STATE_ASSIGNED {
			s.unstarted[j.GetId()] = unstarted{attempt: j.GetAttempt(), deadline: now.Add(s.cfg.LeaseTTL)}
		}
	}
	agents := len(s.leases) // read under the lock: sessions attach from now on
	s.mu.Unlock()
	s.log.Info("scheduler started", zap.Int("agents", agents))

	defer func() {
		s.mu.Lock()
		s.active = false
		for name, sess := range s.sessions {
			sess.close()
			delete(s.sessions, name)
		}
		s.leases = map[string]lease{}
		s.unstarted = map[string]unstarted{}
		s.mu.Unlock()
		s.log.Info("scheduler stopped")
	}()

	tick := s.cfg.LeaseTTL / 10
	if tick < 20*time.Millisecond {
		tick = 20 * time.Millisecond
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		changed := s.store.DispatchChanged()
		if err := s.dispatch(ctx); err != nil {
			if errors.Is(err, raftnode.ErrNotLeader) || errors.Is(err, raftnode.ErrOutcomeUnknown) {
				s.log.Warn("dispatch stopped: leadership lost", zap.Error(err))
				<-ctx.Done()
				return
			}
			s.log.Error("dispatch failed", zap.Error(err))
		}
		s.expireLeases(ctx)
		s.expireUnstarted(ctx)
		s.expireApprovals(ctx)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.kick:
		case <-ticker.C:
		}
	}
}

// Kick asks the loop to look at the queue now.
func (s *Scheduler) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Attach makes sess the agent's current session, closing an older one.
func (s *Scheduler) Attach(sess *Session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return ErrNotActive
	}
	if old, ok := s.sessions[sess.Agent]; ok && old != sess {
		old.close()
	}
	s.sessions[sess.Agent] = sess
	s.leases[sess.Agent] = lease{sessionID: sess.ID, deadline: s.cfg.Now().Add(s.cfg.LeaseTTL)}
	s.Kick()
	return nil
}

// Detach forgets sess if it is still the agent's current session. Its lease
// keeps running: the agent has until the deadline to come back.
func (s *Scheduler) Detach(sess *Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.sessions[sess.Agent]; ok && cur == sess {
		delete(s.sessions, sess.Agent)
	}
	sess.close()
}

// Touch renews the lease of sess (any message from the agent counts).
func (s *Scheduler) Touch(sess *Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.sessions[sess.Agent]; ok && cur == sess {
		s.leases[sess.Agent] = lease{sessionID: sess.ID, deadline: s.cfg.Now().Add(s.cfg.LeaseTTL)}
	}
}

// SendCancel tells the agent holding an attempt to stop it. It is best
// effort: an agent that misses it learns on its next report that the
// attempt is stale.
func (s *Scheduler) SendCancel(agent string, ref *kilnv1.AttemptRef, reason string) {
	s.mu.Lock()
	sess := s.sessions[agent]
	s.mu.Unlock()
	if sess == nil {
		return
	}
	sess.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Cancel{Cancel: &kilnv1.CancelJob{
		JobId: ref.GetJobId(), Attempt: ref.GetAttempt(), Reason: reason,
	}}})
}

type candidate struct {
	sess *Session
	free int
}

// dispatch assigns queued jobs to sessions with free slots. All the
// assignments of one pass are committed together (one disk write) and sent
// once committed.
func (s *Scheduler) dispatch(ctx context.Context) error {
	queued := s.store.QueuedJobs()
	if len(queued) == 0 {
		return nil
	}
	// One read for every agent's busy slots: a lookup per session costs a
	// transaction each, which at 10,000 agents dominated a pass.
	busy := s.store.ActiveJobCounts()
	s.mu.Lock()
	cands := make([]*candidate, 0, len(s.sessions))
	for name, sess := range s.sessions {
		if sess.Draining() || sess.closed() {
			continue
		}
		free := sess.Slots - busy[name]
		if free > 0 {
			cands = append(cands, &candidate{sess: sess, free: free})
		}
	}
	s.mu.Unlock()
	if len(cands) == 0 {
		return nil
	}

	type sent struct {
		job     *kilnv1.Job
		attempt uint32
		sess    *Session
		p       raftnode.Pending
	}
	var (
		pending  []sent
		firstErr error
	)
	now := s.cfg.Now().UnixMilli()
	for _, job := range queued {
		if job.GetSpec().GetDeploy() != nil {
			continue // the deploy controller runs it as pinned jobs
		}
		pin := job.GetSpec().GetPinAgent()
		var best *candidate
		for _, c := range cands {
			if pin != "" && c.sess.Agent != pin {
				continue
			}
			// Most free slots; ties go to the first agent by name
			// (deterministic, which keeps tests and logs readable).
			if c.free > 0 && Matches(job.GetSpec().GetAgents(), c.sess.Labels) &&
				(best == nil || c.free > best.free || (c.free == best.free && c.sess.Agent < best.sess.Agent)) {
				best = c
			}
		}
		if best == nil {
			continue
		}
		best.free--
		attempt := job.GetAttempt() + 1
		p, err := s.raft.ApplyAsync(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{
			JobId: job.GetId(), Attempt: attempt, Agent: best.sess.Agent, TimeUnixMs: now,
		})
		if err != nil {
			// Still wait for (and deliver) the assignments already handed
			// to Raft: they may commit.
			firstErr = err
			break
		}
		pending = append(pending, sent{job: job, attempt: attempt, sess: best.sess, p: p})
	}
	for _, p := range pending {
		if _, err := p.p.Wait(); err != nil {
			if firstErr == nil && (errors.Is(err, raftnode.ErrNotLeader) || errors.Is(err, raftnode.ErrOutcomeUnknown)) {
				firstErr = err
			}
			s.log.Debug("assignment rejected", zap.String("job", p.job.GetId()), zap.Error(err))
			continue
		}
		s.log.Debug("job assigned", zap.String("job", p.job.GetId()), zap.Uint32("attempt", p.attempt), zap.String("agent", p.sess.Agent))
		s.mu.Lock()
		s.unstarted[p.job.GetId()] = unstarted{attempt: p.attempt, deadline: s.cfg.Now().Add(s.cfg.LeaseTTL)}
		s.mu.Unlock()
		msg := &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Assignment{Assignment: s.assignment(p.job, p.attempt)}}
		if !p.sess.Send(msg) {
			// The session ended while the assignment was being committed
			// (typically replaced by a reconnect of the same agent, whose
			// reconciliation ran before this commit). The attempt belongs
			// to the agent, not the session: hand it to the current one.
			// Without one, the lease expiry or the agent's next
			// registration declares the attempt lost.
			s.mu.Lock()
			cur := s.sessions[p.sess.Agent]
			s.mu.Unlock()
			if cur != nil && cur != p.sess {
				cur.Send(msg)
			}
		}
	}
	return firstErr
}

// assignment builds what the agent needs to run an attempt.
func (s *Scheduler) assignment(job *kilnv1.Job, attempt uint32) *kilnv1.JobAssignment {
	env := map[string]string{}
	b, ok := s.store.BuildHeader(job.GetBuildId()) // jobs and test summary are not needed here
	if ok {
		for k, v := range b.GetEnv() {
			env[k] = v
		}
		env["KILN_BUILD_NAME"] = b.GetName()
	}
	for k, v := range job.GetSpec().GetEnv() {
		env[k] = v
	}
	for k, v := range sourceEnv(b, job.GetBuildId()) {
		env[k] = v
	}
	env["KILN_BUILD_ID"] = job.GetBuildId()
	env["KILN_JOB_ID"] = job.GetId()
	env["KILN_JOB_KEY"] = job.GetKey()
	env["KILN_ATTEMPT"] = strconv.FormatUint(uint64(attempt), 10)
	timeout := job.GetSpec().GetTimeoutMs()
	if timeout <= 0 {
		timeout = s.cfg.DefaultJobTimeout.Milliseconds()
	}
	a := &kilnv1.JobAssignment{
		JobId:     job.GetId(),
		BuildId:   job.GetBuildId(),
		Key:       job.GetKey(),
		Attempt:   attempt,
		Commands:  job.GetSpec().GetCommands(),
		Env:       env,
		TimeoutMs: timeout,
		Source:    checkoutSource(b),
		Inputs:    s.inputs(job),
		// The step's artifact and JUnit report globs.
		Artifacts: job.GetSpec().GetArtifacts(),
		Junit:     job.GetSpec().GetJunit(),
		// Container image, limits, network and services of the step.
		Runtime:   job.GetSpec().GetRuntime(),
		Buildspec: job.GetSpec().GetBuildspec(),
	}
	if names := job.GetSpec().GetSecrets(); len(names) > 0 {
		// Opened here, in the leader's memory, and sent only on this
		// agent's stream: never in a Raft command.
		if s.cfg.Secrets == nil {
			a.MissingSecrets = names
		} else {
			a.Secrets, a.MissingSecrets = s.cfg.Secrets(b.GetSource().GetRepo(), names)
		}
		if len(a.MissingSecrets) > 0 {
			s.log.Warn("job assigned without some of its secrets; the agent fails it", zap.String("job", job.GetId()),
				zap.Strings("missing", a.MissingSecrets))
		}
	}
	return a
}

// inputs are the artifacts an attempt receives. With spec.artifacts_from
// (artifacts: {from: STEP, paths}), the files of those steps' current
// attempts that match the paths (all without paths). Otherwise artifacts
// are passed along `needs` edges, direct needs only: for every step named
// in spec.needs, the artifacts of that job's current attempt (in needs
// order, then by path). A need that produced none contributes nothing.
func (s *Scheduler) inputs(job *kilnv1.Job) []*kilnv1.Artifact {
	current := func(key string) []*kilnv1.Artifact {
		need, ok := s.store.Job(job.GetBuildId() + "." + key)
		if !ok {
			return nil
		}
		return s.store.JobArtifacts(need.GetId(), need.GetAttempt())
	}
	var out []*kilnv1.Artifact
	if from := job.GetSpec().GetArtifactsFrom(); len(from) > 0 {
		// artifacts: {from: STEP, paths: [...]} selects exactly these.
		for _, src := range from {
			var globs []glob.Glob
			for _, p := range src.GetPaths() {
				if g, err := glob.Compile(p); err == nil {
					globs = append(globs, g)
				}
			}
			for _, a := range current(src.GetStep()) {
				if len(globs) == 0 || slices.ContainsFunc(globs, func(g glob.Glob) bool { return g.Match(a.GetFile().GetPath()) }) {
					out = append(out, a)
				}
			}
		}
		return out
	}
	for _, key := range job.GetSpec().GetNeeds() {
		out = append(out, current(key)...)
	}
	return out
}

// sourceEnv is the KILN_* environment describing where a build's code
// comes from: KILN_COMMIT, KILN_BRANCH, KILN_TAG (empty without a git
// source), KILN_REPO (the registered repository's name, else the URL),
// KILN_BUILD_NUMBER (the per-repository counter, else the build id) and
// KILN_EVENT. They override variables of the same name in the build file.
func sourceEnv(b *kilnv1.Build, buildID string) map[string]string {
	src := b.GetSource()
	repo := src.GetRepo()
	if repo == "" {
		// No credentials of the URL in every job's environment.
		repo = gitsrc.StripCredentials(src.GetGitUrl())
	}
	number := buildID
	if n := b.GetRepoBuildNumber(); n > 0 {
		number = strconv.FormatUint(n, 10)
	}
	event := b.GetEvent()
	if event == "" {
		event = "manual"
	}
	return map[string]string{
		"KILN_COMMIT":       src.GetCommit(),
		"KILN_BRANCH":       src.GetBranch(),
		"KILN_TAG":          src.GetTag(),
		"KILN_REPO":         repo,
		"KILN_BUILD_NUMBER": number,
		"KILN_EVENT":        event,
	}
}

// checkoutSource is the source an agent checks out (a pinned git commit)
// or downloads and unpacks (an uploaded archive), or nil when the build has
// neither.
func checkoutSource(b *kilnv1.Build) *kilnv1.Source {
	src := b.GetSource()
	if src.GetArchiveSha256() != "" {
		return &kilnv1.Source{ArchiveSha256: src.GetArchiveSha256(), ArchiveSize: src.GetArchiveSize()}
	}
	if src.GetGitUrl() == "" || src.GetCommit() == "" {
		return nil
	}
	return src
}

// expireLeases commits the loss of agents whose lease lapsed.
func (s *Scheduler) expireLeases(ctx context.Context) {
	now := s.cfg.Now()
	type expired struct {
		agent string
		l     lease
		sess  *Session
	}
	var due []expired
	s.mu.Lock()
	for name, l := range s.leases {
		if now.Before(l.deadline) {
			continue
		}
		sess := s.sessions[name]
		if sess != nil && sess.ID != l.sessionID {
			continue
		}
		due = append(due, expired{agent: name, l: l, sess: sess})
		delete(s.leases, name)
		if sess != nil {
			delete(s.sessions, name)
			sess.close()
		}
	}
	s.mu.Unlock()

	for _, e := range due {
		log := s.log.With(zap.String("agent", e.agent))
		a, ok := s.store.Agent(e.agent)
		if !ok {
			continue
		}
		hasJobs := len(s.store.AgentJobs(e.agent)) > 0
		switch {
		case e.sess != nil || hasJobs:
			log.Warn("agent lease expired; its jobs are lost", zap.Duration("ttl", s.cfg.LeaseTTL), zap.Bool("had_jobs", hasJobs))
			_, err := s.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{
				Name: e.agent, SessionId: e.l.sessionID, TimeUnixMs: now.UnixMilli(),
				Reason: "agent " + e.agent + " sent no heartbeat for " + s.cfg.LeaseTTL.String(),
			})
			if err != nil {
				log.Warn("could not commit agent expiry", zap.Error(err))
			}
		case a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED || a.GetState() == kilnv1.AgentState_AGENT_STATE_DRAINING:
			_, err := s.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT, &fsmv1.DisconnectAgent{
				Name: e.agent, SessionId: e.l.sessionID, TimeUnixMs: now.UnixMilli(),
			})
			if err != nil {
				log.Warn("could not commit agent disconnect", zap.Error(err))
			}
		}
	}
}

// expireUnstarted declares lost the assignments an agent never confirmed
// within a lease TTL: the assignment was lost on the way (the session it
// went to died), and the agent, still alive and heart-beating, will never
// run it.
func (s *Scheduler) expireUnstarted(ctx context.Context) {
	now := s.cfg.Now()
	var lost []*kilnv1.AttemptRef
	s.mu.Lock()
	for id, u := range s.unstarted {
		// Cheap check first: this runs on every pass of the loop.
		if now.Before(u.deadline) {
			continue
		}
		delete(s.unstarted, id)
		if j, ok := s.store.Job(id); ok && j.GetAttempt() == u.attempt && j.GetState() == kilnv1.JobState_JOB_STATE_ASSIGNED {
			lost = append(lost, &kilnv1.AttemptRef{JobId: id, Attempt: u.attempt})
		}
	}
	s.mu.Unlock()
	if len(lost) == 0 {
		return
	}
	s.log.Warn("assignments never started; declaring them lost", zap.Int("attempts", len(lost)))
	if _, err := s.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{
		Attempts: lost, Reason: "the agent never confirmed the assignment within " + s.cfg.LeaseTTL.String(), TimeUnixMs: now.UnixMilli(),
	}); err != nil {
		s.log.Warn("could not commit lost assignments", zap.Error(err))
	}
}

// Matches reports whether labels satisfy every pair of the selector.
func Matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
