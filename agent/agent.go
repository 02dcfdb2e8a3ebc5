// Package agent is the Kiln build agent: it holds one session (an
// AgentService.Connect stream) to the coordinators' leader, runs the job
// attempts assigned to it with the executor, and ships their output back as
// log chunks.
//
// Delivery is at-least-once and resumable: every attempt the agent holds
// (running, or finished but not yet acknowledged) keeps its JobStarted
// report, every log chunk not yet acknowledged and its JobFinished report in
// memory. When a session breaks, jobs keep running and their output keeps
// buffering; the next session's Register lists the held attempts and,
// after Registered, the agent resends for each attempt, in order, JobStarted,
// the unacknowledged chunks in sequence order, ArtifactsUploaded,
// TestReports and JobFinished. The cluster drops duplicates by (job, attempt, seq) and
// registers artifacts idempotently by (job, attempt, path). An attempt (and
// its slot) is released only by Ack{finished} or Ack{stale}.
//
// Artifacts: the executor downloads the assignment's inputs into the
// workspace before the commands and, after commands that PASSED or FAILED,
// uploads the files matching the assignment's artifact globs to the leader's
// BlobService (uploadArtifact). The uploaded list is held with the attempt
// and sent as ArtifactsUploaded right before JobFinished.
//
// Test results: after the artifacts, the files matching the assignment's
// junit globs are parsed (executor.CollectTests) and held as TestReports,
// sent after ArtifactsUploaded and before JobFinished. A report (even a
// parse error) never changes the attempt's result.
//
// Held state lives only in memory: an agent process that restarts forgets
// its attempts, and the cluster declares them lost when the new session's
// Register does not list them.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/agent/mask"
	"github.com/kiln-ci/kiln/internal/discovery"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// errDropped is returned to the executor by an attempt's output writer once
// the attempt is dropped or the agent stops; the executor then discards the
// rest of the output.
var errDropped = errors.New("attempt dropped")

type attemptKey struct {
	job     string
	attempt uint32
}

// attempt is the state of one held job attempt. Every field is guarded by
// Agent.mu.
type attempt struct {
	key        attemptKey
	asg        *kilnv1.JobAssignment
	log        *zap.Logger
	proc       *executor.Process
	started    *kilnv1.JobStarted
	chunks     []*kilnv1.LogChunk // unacknowledged, in seq order
	unacked    int64              // bytes in chunks and pending
	pending    []byte             // output not yet cut into a chunk
	flushTimer *time.Timer
	flushGen   uint64
	lastSeq    uint64
	artifacts  *kilnv1.ArtifactsUploaded // nil when no file was uploaded
	tests      *kilnv1.TestReports       // nil when no report was parsed
	finished   *kilnv1.JobFinished
	cancelWhy  string // CancelJob received before the process existed
	dropped    bool
	// logged counts the output bytes kept in the log; overflow those
	// dropped past the log limit; lastByte is the last byte kept.
	logged, overflow int64
	lastByte         byte
}

// Agent runs jobs for a Kiln cluster. Create it with New and start it with Run.
type Agent struct {
	cfg  Config
	log  *zap.Logger
	exec *executor.Executor
	// tls is the agent's certificate state and creds the transport
	// credentials of every connection (both nil: plaintext).
	tls   *agentTLS
	creds credentials.TransportCredentials

	mu       sync.Mutex
	cond     *sync.Cond // signals acks and drops to blocked output writers
	attempts map[attemptKey]*attempt
	order    []*attempt // held attempts in assignment order
	draining bool
	stopped  bool
	sess     *session
	ran      bool

	// leaseTTL is the lease TTL (a time.Duration) the last leader
	// announced; it bounds the reconnect backoff.
	leaseTTL atomic.Int64
	// maxLogBytes is the log limit per attempt the last leader announced
	// (Registered.max_log_bytes; 0: none).
	maxLogBytes atomic.Int64
	// sessionAddr is the coordinator address of the last registered
	// session (blob downloads go there first).
	sessionAddr atomic.Pointer[string]
	// etcd resolves etcd:///PREFIX coordinator addresses; set by Run when
	// Config.Coordinators holds one, closed when Run returns.
	etcd atomic.Pointer[discovery.Resolver]

	idle     chan struct{} // closed once draining and nothing is held
	idleOnce sync.Once
	wg       sync.WaitGroup // attempt goroutines

	// testHookAttemptDone, when set, is called after an attempt's process
	// has ended (whether or not the attempt is still held).
	testHookAttemptDone func(job string, attempt uint32, o executor.Outcome)
	// artifactLimits bound collected artifacts (executor defaults when
	// zero; tests lower them).
	artifactLimits executor.ArtifactLimits
	// testLimits bound parsed test reports (executor defaults when zero).
	testLimits executor.TestLimits
	// counters feed the agent's /metrics (metrics.go); http serves them
	// when Config.HTTPAddr is set.
	counters agentCounters
	httpAddr atomic.Value // string
}

// New validates cfg and returns an Agent. Labels os and arch are added from
// runtime.GOOS and runtime.GOARCH when cfg does not set them.
func New(cfg Config, log *zap.Logger) (*Agent, error) {
	if log == nil {
		log = zap.NewNop()
	}
	labels := make(map[string]string, len(cfg.Labels)+2)
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	if _, ok := labels["os"]; !ok {
		labels["os"] = runtime.GOOS
	}
	if _, ok := labels["arch"]; !ok {
		labels["arch"] = runtime.GOARCH
	}
	if cfg.Docker != nil {
		labels[DockerLabel] = "true"
	}
	if cfg.Sandbox != nil {
		labels[SandboxLabel] = "true"
	}
	cfg.Labels = labels
	cfg.Coordinators = append([]string(nil), cfg.Coordinators...)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsState, creds, err := setupTLS(&cfg, log)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		tls:   tlsState,
		creds: creds,
		cfg:   cfg,
		log:   log.With(zap.String("agent", cfg.Name)),
		exec: &executor.Executor{
			WorkDir:        cfg.WorkDir,
			DefaultTimeout: cfg.DefaultTimeout,
			KillGrace:      cfg.KillGrace,
			// Jobs get an allow-list of the agent's environment, never
			// its secrets.
			Env:     executor.BaseEnv(os.Environ(), cfg.PassEnv),
			Name:    cfg.Name,
			Docker:  cfg.Docker,
			Sandbox: cfg.Sandbox,
		},
		attempts: make(map[attemptKey]*attempt),
		idle:     make(chan struct{}),
	}
	a.cond = sync.NewCond(&a.mu)
	return a, nil
}

// Drain stops the agent from taking new jobs: it tells the leader at once
// (Heartbeat{draining}) and makes Run return nil once every held attempt
// has finished and been acknowledged. Drain may be called at any time, more
// than once, and before Run.
func (a *Agent) Drain() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return
	}
	a.draining = true
	a.log.Info("draining", zap.Int("held", len(a.attempts)))
	a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Heartbeat{Heartbeat: &kilnv1.Heartbeat{Draining: true}}})
	a.checkIdleLocked()
}

// Run connects to the cluster and runs assigned jobs until ctx is canceled
// or, after Drain, every held attempt is finished and acknowledged. On
// cancellation it kills every running job (SIGKILL to the process groups),
// waits for them to end and returns ctx.Err(); after a completed drain it
// returns nil. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.ran {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.ran = true
	a.mu.Unlock()

	if slices.ContainsFunc(a.cfg.Coordinators, discovery.IsTarget) {
		r, err := discovery.NewResolver(a.cfg.EtcdEndpoints, a.log)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		a.etcd.Store(r)
		defer func() { _ = r.Close() }() // after every attempt (wg) ended
	}
	a.log.Info("agent starting", zap.Strings("coordinators", a.cfg.Coordinators),
		zap.Any("labels", a.cfg.Labels), zap.Int("slots", a.cfg.Slots), zap.String("work_dir", a.cfg.WorkDir))
	if err := a.ensureIdentity(ctx); err != nil {
		a.log.Error("agent has no identity", zap.Error(err))
		return fmt.Errorf("agent: %w", err)
	}
	stopHTTP, err := a.serveHTTP(ctx)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer stopHTTP()
	renewCtx, stopRenew := context.WithCancel(ctx)
	renewDone := make(chan struct{})
	go func() { defer close(renewDone); a.renewLoop(renewCtx) }()
	defer func() { stopRenew(); <-renewDone }()
	a.removeOrphans(ctx)
	err = a.connectLoop(ctx)
	if err != nil {
		a.hardStop()
	}
	a.wg.Wait()
	if err != nil {
		a.log.Info("agent stopped", zap.Error(err))
		return fmt.Errorf("agent: %w", err)
	}
	a.log.Info("agent drained")
	return nil
}

// Labels the agent announces for its executors.
const (
	// DockerLabel=true: the agent reaches a Docker engine and runs steps
	// that name an image (every such step requires it).
	DockerLabel = "docker"
	// SandboxLabel=true: shell steps run under bubblewrap.
	SandboxLabel = "sandbox"
)

// removeOrphans removes the containers and networks a previous run of
// this agent (same name and work dir) left behind: a new process holds no
// attempt, so none of them is wanted. It runs before the first session so
// that no container of a new attempt can be mistaken for an orphan.
func (a *Agent) removeOrphans(ctx context.Context) {
	if a.cfg.Docker == nil {
		return
	}
	// Bounded: an engine that hangs must not keep the agent from its jobs.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, err := a.cfg.Docker.RemoveOrphans(ctx, a.cfg.Name, a.cfg.WorkDir, nil)
	if err != nil {
		a.log.Warn("could not remove every orphan container", zap.Int("removed", n), zap.Error(err))
		return
	}
	if n > 0 {
		a.log.Info("removed orphan containers of a previous run", zap.Int("removed", n))
	}
}

// hardStop kills every running attempt and releases blocked writers.
func (a *Agent) hardStop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	for _, at := range a.order {
		if at.proc != nil && at.finished == nil {
			at.log.Warn("killing job: agent stopping")
			at.proc.Kill()
		}
	}
	a.cond.Broadcast()
}

// checkIdleLocked closes a.idle when draining and nothing is held.
func (a *Agent) checkIdleLocked() {
	if a.draining && len(a.attempts) == 0 {
		a.idleOnce.Do(func() { close(a.idle) })
	}
}

// enqueueLocked queues msg on the live session, if any. Messages that never
// reach the wire are not lost: the next session resends from held state.
func (a *Agent) enqueueLocked(msg *kilnv1.ConnectRequest) {
	if a.sess != nil {
		a.sess.push(msg)
	}
}

// onAssignment starts a new attempt.
func (a *Agent) onAssignment(asg *kilnv1.JobAssignment) {
	key := attemptKey{asg.GetJobId(), asg.GetAttempt()}
	log := a.log.With(zap.String("job", key.job), zap.Uint32("attempt", key.attempt))
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, held := a.attempts[key]; held {
		log.Debug("assignment for an attempt already held; ignored")
		return
	}
	if a.draining || a.stopped {
		// The protocol has no way to refuse an assignment; the leader learns
		// from our draining heartbeat and re-queues the job once this
		// session's lease ends.
		log.Warn("assignment while draining; ignored")
		return
	}
	if len(a.attempts) >= a.cfg.Slots {
		log.Warn("assignment beyond the free slots; running it anyway", zap.Int("held", len(a.attempts)), zap.Int("slots", a.cfg.Slots))
	}
	at := &attempt{key: key, asg: asg, log: log}
	a.attempts[key] = at
	a.order = append(a.order, at)
	a.wg.Add(1)
	go a.runAttempt(at)
}

// runAttempt runs one attempt from start to JobFinished.
func (a *Agent) runAttempt(at *attempt) {
	defer a.wg.Done()
	asg := at.asg
	a.mu.Lock()
	skip := at.dropped || a.stopped
	cancelWhy := at.cancelWhy
	a.mu.Unlock()
	if skip {
		return
	}
	if cancelWhy != "" {
		a.markStarted(at, nil)
		a.finish(at, executor.Outcome{Result: kilnv1.JobResult_JOB_RESULT_CANCELED, ExitCode: -1, Reason: cancelWhy})
		return
	}
	if missing := asg.GetMissingSecrets(); len(missing) > 0 {
		a.markStarted(at, nil)
		a.finish(at, executor.Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: -1,
			Reason: "secrets not available: " + strings.Join(missing, ", ") + " (deleted since the submit, or the coordinators' --secrets-key-file differ)"})
		return
	}
	env, out := jobEnvAndOutput(asg, &attemptWriter{a: a, at: at})
	spec := executor.Spec{
		JobID:    asg.GetJobId(),
		BuildID:  asg.GetBuildId(),
		Attempt:  asg.GetAttempt(),
		Commands: asg.GetCommands(),
		Env:      env,
		Timeout:  time.Duration(asg.GetTimeoutMs()) * time.Millisecond,
		Source:   asg.GetSource(),
		Fetch:    a.fetchBlob,

		Inputs:         asg.GetInputs(),
		Artifacts:      asg.GetArtifacts(),
		Upload:         a.uploadArtifact,
		ArtifactLimits: a.artifactLimits,
		JUnit:          asg.GetJunit(),
		TestLimits:     a.testLimits,
		Runtime:        asg.GetRuntime(),
		Buildspec:      asg.GetBuildspec(),
	}
	proc, err := a.exec.Start(spec, out)
	if err != nil {
		at.log.Error("cannot start job", zap.Error(err))
		a.markStarted(at, nil)
		a.finish(at, executor.Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: -1, Reason: "agent could not start the job: " + err.Error()})
		return
	}
	at.log.Info("job started", zap.Int("pid", proc.Pid()), zap.String("workspace", proc.WorkspacePath()))
	a.markStarted(at, proc)
	o := proc.Wait()
	if err := out.Flush(); err != nil {
		at.log.Debug("log tail not written", zap.Error(err))
	}
	at.log.Info("job ended", zap.Stringer("result", o.Result), zap.Int32("exit_code", o.ExitCode), zap.String("reason", o.Reason))
	if h := a.testHookAttemptDone; h != nil {
		h(at.key.job, at.key.attempt, o)
	}
	a.finish(at, o)
}

// jobEnvAndOutput is the environment of an attempt (the assignment's, plus
// its secrets) and the writer of its output: the log writer behind a
// masker that hides the secrets' values (agent/mask).
func jobEnvAndOutput(asg *kilnv1.JobAssignment, w io.Writer) (map[string]string, *mask.Writer) {
	env := asg.GetEnv()
	values := make([]string, 0, len(asg.GetSecrets()))
	if len(asg.GetSecrets()) > 0 {
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		for k, v := range asg.GetSecrets() {
			env[k] = v
			values = append(values, v)
		}
	}
	return env, mask.New(w, values)
}

// markStarted records the start of an attempt and reports it; it applies a
// stop, drop or cancel that arrived while the process was being started.
func (a *Agent) markStarted(at *attempt, proc *executor.Process) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at.proc = proc
	if proc != nil {
		switch {
		case at.dropped || a.stopped:
			proc.Kill()
		case at.cancelWhy != "":
			proc.Cancel(at.cancelWhy)
		}
	}
	if at.dropped {
		return
	}
	at.started = &kilnv1.JobStarted{JobId: at.key.job, Attempt: at.key.attempt, TimeUnixMs: time.Now().UnixMilli()}
	a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: at.started}})
}

// finish cuts the last chunk and reports the end of the attempt.
func (a *Agent) finish(at *attempt, o executor.Outcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at.dropped {
		return
	}
	a.markOverflowLocked(at)
	a.cutLocked(at, len(at.pending))
	a.stopFlushTimerLocked(at)
	if len(o.Artifacts) > 0 {
		at.artifacts = &kilnv1.ArtifactsUploaded{JobId: at.key.job, Attempt: at.key.attempt, Files: o.Artifacts}
		a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Artifacts{Artifacts: at.artifacts}})
	}
	if len(o.Tests) > 0 {
		at.tests = &kilnv1.TestReports{JobId: at.key.job, Attempt: at.key.attempt, Reports: o.Tests}
		a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Tests{Tests: at.tests}})
	}
	a.counters.jobFinished(o.Result)
	at.finished = &kilnv1.JobFinished{
		JobId:      at.key.job,
		Attempt:    at.key.attempt,
		Result:     o.Result,
		ExitCode:   o.ExitCode,
		Reason:     o.Reason,
		LastSeq:    at.lastSeq,
		TimeUnixMs: time.Now().UnixMilli(),
	}
	a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: at.finished}})
}

// onCancel stops an attempt at the leader's request.
func (a *Agent) onCancel(c *kilnv1.CancelJob) {
	key := attemptKey{c.GetJobId(), c.GetAttempt()}
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.attempts[key]
	if !ok || at.finished != nil {
		a.log.Debug("cancel for an attempt not running; ignored", zap.String("job", key.job), zap.Uint32("attempt", key.attempt))
		return
	}
	why := c.GetReason()
	if why == "" {
		why = "canceled"
	}
	at.log.Info("canceling job", zap.String("reason", why))
	if at.cancelWhy == "" {
		at.cancelWhy = why
	}
	if at.proc != nil {
		at.proc.Cancel(why)
	}
}

// onAck releases acknowledged chunks and, with finished or stale, the attempt.
func (a *Agent) onAck(ack *kilnv1.Ack) {
	key := attemptKey{ack.GetJobId(), ack.GetAttempt()}
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.attempts[key]
	if !ok {
		return
	}
	if ack.GetStale() {
		at.log.Warn("attempt is stale; dropping it")
		if at.proc != nil && at.finished == nil {
			at.proc.Kill()
		}
		a.dropLocked(at)
		return
	}
	n := 0
	for n < len(at.chunks) && at.chunks[n].GetSeq() <= ack.GetLogSeq() {
		at.unacked -= int64(len(at.chunks[n].GetData()))
		n++
	}
	if n > 0 {
		clear(at.chunks[:n])
		at.chunks = at.chunks[n:]
		a.cond.Broadcast()
	}
	if ack.GetFinished() {
		if at.finished == nil {
			at.log.Warn("cluster acknowledged a finish we did not report; dropping the attempt")
			if at.proc != nil {
				at.proc.Kill()
			}
		} else {
			at.log.Debug("finish acknowledged")
		}
		a.dropLocked(at)
	}
}

// dropLocked forgets an attempt and frees its slot.
func (a *Agent) dropLocked(at *attempt) {
	if at.dropped {
		return
	}
	at.dropped = true
	a.stopFlushTimerLocked(at)
	at.chunks, at.pending = nil, nil
	delete(a.attempts, at.key)
	for i, o := range a.order {
		if o == at {
			a.order = append(a.order[:i], a.order[i+1:]...)
			break
		}
	}
	a.cond.Broadcast()
	a.checkIdleLocked()
}

// heldRefsLocked lists the held attempts for Register.
func (a *Agent) heldRefsLocked() []*kilnv1.AttemptRef {
	refs := make([]*kilnv1.AttemptRef, 0, len(a.order))
	for _, at := range a.order {
		refs = append(refs, &kilnv1.AttemptRef{JobId: at.key.job, Attempt: at.key.attempt})
	}
	return refs
}

// resendLocked queues, per held attempt in order, JobStarted, the
// unacknowledged chunks, ArtifactsUploaded, TestReports and JobFinished on the (new)
// live session.
func (a *Agent) resendLocked() {
	for _, at := range a.order {
		if at.started != nil {
			a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: at.started}})
		}
		for _, c := range at.chunks {
			a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: c}})
		}
		if at.artifacts != nil {
			a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Artifacts{Artifacts: at.artifacts}})
		}
		if at.tests != nil {
			a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Tests{Tests: at.tests}})
		}
		if at.finished != nil {
			a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: at.finished}})
		}
	}
}

// attemptWriter receives an attempt's output from the executor and cuts it
// into log chunks.
type attemptWriter struct {
	a  *Agent
	at *attempt
}

// Write buffers p, blocking while the attempt's unacknowledged output is at
// the MaxUnackedBytes bound (backpressure on the job's pipe).
func (w *attemptWriter) Write(p []byte) (int, error) {
	a, at := w.a, w.at
	a.mu.Lock()
	defer a.mu.Unlock()
	for at.unacked >= a.cfg.MaxUnackedBytes && !at.dropped && !a.stopped {
		a.cond.Wait()
	}
	if at.dropped || a.stopped {
		return 0, errDropped
	}
	n := len(p)
	if p = a.capLocked(at, p); len(p) == 0 {
		return n, nil
	}
	at.pending = append(at.pending, p...)
	at.unacked += int64(len(p))
	for len(at.pending) >= a.cfg.LogFlushBytes {
		a.cutLocked(at, a.cfg.LogFlushBytes)
	}
	if len(at.pending) > 0 && at.flushTimer == nil {
		gen := at.flushGen
		at.flushTimer = time.AfterFunc(a.cfg.LogFlushInterval, func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if at.flushGen != gen || at.dropped {
				return
			}
			at.flushTimer = nil
			at.flushGen++
			a.cutLocked(at, len(at.pending))
		})
	}
	return n, nil
}

// stopFlushTimerLocked cancels a pending flush.
func (a *Agent) stopFlushTimerLocked(at *attempt) {
	if at.flushTimer != nil {
		at.flushTimer.Stop()
		at.flushTimer = nil
	}
	at.flushGen++
}

// cutLocked turns the first n pending bytes into the next log chunk.
func (a *Agent) cutLocked(at *attempt, n int) {
	if n <= 0 {
		return
	}
	data := make([]byte, n)
	copy(data, at.pending[:n])
	rest := copy(at.pending, at.pending[n:])
	at.pending = at.pending[:rest]
	if rest == 0 {
		a.stopFlushTimerLocked(at)
	}
	at.lastSeq++
	c := &kilnv1.LogChunk{JobId: at.key.job, Attempt: at.key.attempt, Seq: at.lastSeq, Data: data, TimeUnixMs: time.Now().UnixMilli()}
	at.chunks = append(at.chunks, c)
	a.enqueueLocked(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: c}})
}
