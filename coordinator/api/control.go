package api

import (
	"context"
	"regexp"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/buildfile"
	"github.com/kiln-ci/kiln/internal/pipeline"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ControlServer implements kilnv1.ControlServiceServer.
type ControlServer struct {
	kilnv1.UnimplementedControlServiceServer
	d *Deps
}

// NewControlServer returns the control service.
func NewControlServer(d *Deps) *ControlServer { return &ControlServer{d: d} }

// singleCommandKey is the job key of a build made from one command.
const singleCommandKey = "run"

// SubmitBuild validates, parses and commits a build.
func (s *ControlServer) SubmitBuild(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.SubmitBuildResponse, error) {
	if err := validateSubmit(req); err != nil {
		return nil, err
	}
	cmd := &fsmv1.SubmitBuild{
		RequestId:  req.GetRequestId(),
		Submitter:  req.GetSubmitter(),
		Name:       req.GetName(),
		Env:        req.GetEnv(),
		TimeUnixMs: s.d.now().UnixMilli(),
	}
	if err := s.resolveSource(ctx, req, cmd); err != nil {
		return nil, err
	}
	if req.GetSpecYaml() != "" {
		name := req.GetSpecFilename()
		if name == "" {
			name = "build.yaml"
		}
		f, err := buildfile.Load(name, []byte(req.GetSpecYaml()))
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "invalid build file:\n"+err.Error())
		}
		env := map[string]string{}
		for k, v := range f.Env() {
			env[k] = v
		}
		for k, v := range req.GetEnv() {
			env[k] = v
		}
		cmd.Env = env
		if cmd.Steps, err = f.Resolve(conditionContext(req, cmd)); err != nil {
			return nil, status.Error(codes.InvalidArgument, "invalid build file:\n"+err.Error())
		}
		if cmd.Name == "" {
			cmd.Name = f.Name()
		}
		if c := f.Concurrency(); c != nil {
			cmd.ConcurrencyGroup, cmd.ConcurrencyLimit = c.Group, c.Limit
		}
		cmd.ArtifactRetentionMs = f.ArtifactRetention().Milliseconds()
	} else {
		cmd.Steps = []*kilnv1.StepSpec{{
			Key:       singleCommandKey,
			Name:      singleCommandKey,
			Commands:  []string{req.GetCommand()},
			Agents:    req.GetLabels(),
			TimeoutMs: req.GetTimeoutMs(),
			Retry:     &kilnv1.RetryPolicy{OnAgentLost: 1},
		}}
	}
	if cmd.Name == "" {
		cmd.Name = firstLine(req.GetCommand(), 80)
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("build submitted", zap.String("build", res.Build.GetId()), zap.String("request", req.GetRequestId()),
		zap.String("submitter", req.GetSubmitter()), zap.Int("jobs", len(res.Build.GetJobs())))
	s.d.Scheduler.Kick()
	return &kilnv1.SubmitBuildResponse{Build: res.Build}, nil
}

// conditionContext is what `if` conditions see: the branch and tag of the
// resolved source unless the request names them, the event ("manual" when
// unset) and the build's environment.
func conditionContext(req *kilnv1.SubmitBuildRequest, cmd *fsmv1.SubmitBuild) pipeline.Context {
	ctx := pipeline.Context{
		Branch: req.GetBranch(),
		Tag:    req.GetTag(),
		Event:  cmd.GetEvent(),
		Env:    cmd.GetEnv(),
	}
	if ctx.Branch == "" {
		ctx.Branch = cmd.GetSource().GetBranch()
	}
	if ctx.Tag == "" {
		ctx.Tag = cmd.GetSource().GetTag()
	}
	if ctx.Event == "" {
		ctx.Event = req.GetEvent()
	}
	if ctx.Event == "" {
		ctx.Event = "manual"
	}
	return ctx
}

func validateSubmit(req *kilnv1.SubmitBuildRequest) error {
	switch {
	case req.GetRequestId() == "":
		return invalid("request_id is required (a client-generated unique id that makes retries safe)")
	case len(req.GetRequestId()) > MaxRequestID:
		return invalid("request_id: %d bytes; the limit is %d", len(req.GetRequestId()), MaxRequestID)
	case (req.GetSpecYaml() == "") == (req.GetCommand() == ""):
		return invalid("give exactly one of spec_yaml (a build file) or command (one shell command line)")
	case len(req.GetSpecYaml()) > MaxSpecBytes:
		return invalid("spec_yaml: the build file is %d bytes; the limit is %d", len(req.GetSpecYaml()), MaxSpecBytes)
	case len(req.GetCommand()) > MaxCommandBytes:
		return invalid("command: %d bytes; the limit is %d", len(req.GetCommand()), MaxCommandBytes)
	case strings.TrimSpace(req.GetSpecYaml()) == "" && strings.TrimSpace(req.GetCommand()) == "":
		return invalid("command: blank (give a shell command line or a build file in spec_yaml)")
	case len(req.GetName()) > MaxNameBytes:
		return invalid("name: %d bytes; the limit is %d", len(req.GetName()), MaxNameBytes)
	case req.GetTimeoutMs() < 0:
		return invalid("timeout_ms: negative")
	case len(req.GetLabels()) > MaxLabelEntries:
		return invalid("labels: %d entries; the limit is %d", len(req.GetLabels()), MaxLabelEntries)
	}
	if err := validateEnv(req.GetEnv()); err != nil {
		return err
	}
	for k := range req.GetLabels() {
		if k == "" {
			return invalid("labels: a label has an empty key")
		}
	}
	if !utf8.ValidString(req.GetSpecYaml()) {
		return invalid("spec_yaml: the build file is not valid UTF-8")
	}
	return nil
}

// envName is the shape of an environment variable name, as the pipeline
// parser also requires.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validateEnv(env map[string]string) error {
	if len(env) > MaxEnvEntries {
		return invalid("env: %d variables; the limit is %d", len(env), MaxEnvEntries)
	}
	size := 0
	for k, v := range env {
		if !envName.MatchString(k) {
			return invalid("env: variable name %q is not valid (letters, digits and _, not starting with a digit)", k)
		}
		if strings.ContainsRune(v, 0) {
			return invalid("env: variable %s contains a NUL byte", k)
		}
		size += len(k) + len(v)
	}
	if size > MaxEnvBytes {
		return invalid("env: %d bytes; the limit is %d", size, MaxEnvBytes)
	}
	return nil
}

func firstLine(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// GetBuild serves a build from the local state.
func (s *ControlServer) GetBuild(_ context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	b, ok := s.d.Store.Build(req.GetBuildId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
	}
	return &kilnv1.GetBuildResponse{Build: b}, nil
}

// ListBuilds serves the newest builds from the local state.
func (s *ControlServer) ListBuilds(_ context.Context, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, invalid("limit is negative")
	case limit == 0:
		limit = 50
	case limit > MaxListBuilds:
		limit = MaxListBuilds
	}
	return &kilnv1.ListBuildsResponse{Builds: s.d.Store.ListBuilds(limit)}, nil
}

// WatchBuild sends the build now and on every change until it finishes. It
// wakes only for changes of this build (its row, jobs, logs' progress and
// test reports).
func (s *ControlServer) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.ControlService_WatchBuildServer) error {
	var last *kilnv1.Build
	for {
		view := s.d.Store.View()
		b, ok := view.Build(req.GetBuildId())
		if !ok {
			return status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
		}
		if last == nil || !proto.Equal(last, b) {
			if err := stream.Send(&kilnv1.WatchBuildResponse{Build: b}); err != nil {
				return err
			}
			last = b
		}
		if BuildFinished(b.GetState()) {
			return nil
		}
		if err := view.Wait(stream.Context()); err != nil {
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
}

// BuildFinished reports whether a build state is final.
func BuildFinished(st kilnv1.BuildState) bool {
	switch st {
	case kilnv1.BuildState_BUILD_STATE_PASSED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELED:
		return true
	}
	return false
}

// JobFinished reports whether a job state is final.
func JobFinished(st kilnv1.JobState) bool {
	switch st {
	case kilnv1.JobState_JOB_STATE_PASSED, kilnv1.JobState_JOB_STATE_FAILED, kilnv1.JobState_JOB_STATE_CANCELED,
		kilnv1.JobState_JOB_STATE_TIMED_OUT, kilnv1.JobState_JOB_STATE_LOST, kilnv1.JobState_JOB_STATE_SKIPPED:
		return true
	}
	return false
}

// logBatch bounds the chunks read from the store per job per pass.
const logBatch = 256

// StreamLogs sends the committed log of the current attempt of each job.
// With follow it keeps going until every selected job is finished, waking
// only for changes of the build and of the selected jobs and their logs.
func (s *ControlServer) StreamLogs(req *kilnv1.StreamLogsRequest, stream kilnv1.ControlService_StreamLogsServer) error {
	type pos struct {
		attempt uint32
		seq     uint64
	}
	positions := map[string]pos{}
	for _, p := range req.GetAfter() {
		positions[p.GetJobKey()] = pos{attempt: p.GetAttempt(), seq: p.GetSeq()}
	}
	for {
		view := s.d.Store.View()
		jobs, ok := view.BuildJobs(req.GetBuildId(), req.GetJobKey())
		if !ok {
			return status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
		}
		if len(jobs) == 0 {
			return status.Errorf(codes.NotFound, "build %s has no job %q", req.GetBuildId(), req.GetJobKey())
		}
		allDone := true
		for _, j := range jobs {
			if !JobFinished(j.GetState()) {
				allDone = false
			}
			if j.GetAttempt() == 0 {
				continue
			}
			p := positions[j.GetKey()]
			if p.attempt != j.GetAttempt() {
				if p.attempt > j.GetAttempt() {
					continue
				}
				p = pos{attempt: j.GetAttempt()}
			}
			for {
				chunks := view.Logs(j.GetId(), p.attempt, p.seq, logBatch)
				for _, c := range chunks {
					if err := stream.Send(&kilnv1.StreamLogsResponse{
						JobId: j.GetId(), JobKey: j.GetKey(), Attempt: c.GetAttempt(), Seq: c.GetSeq(), Data: c.GetData(),
					}); err != nil {
						return err
					}
					p.seq = c.GetSeq()
				}
				if len(chunks) < logBatch {
					break
				}
			}
			positions[j.GetKey()] = p
		}
		if !req.GetFollow() || allDone {
			return nil
		}
		if err := view.Wait(stream.Context()); err != nil {
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
}

// CancelBuild commits the cancellation and tells agents to stop.
func (s *ControlServer) CancelBuild(ctx context.Context, req *kilnv1.CancelBuildRequest) (*kilnv1.CancelBuildResponse, error) {
	if req.GetBuildId() == "" {
		return nil, invalid("build_id is required")
	}
	if len(req.GetRequestId()) > MaxRequestID || len(req.GetReason()) > MaxNameBytes {
		return nil, invalid("request_id or reason too long")
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "canceled by user"
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{
		RequestId: req.GetRequestId(), BuildId: req.GetBuildId(), Reason: reason, TimeUnixMs: s.d.now().UnixMilli(),
	})
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	for i, ref := range res.Canceled {
		if i < len(res.Agents) {
			s.d.Scheduler.SendCancel(res.Agents[i], ref, reason)
		}
	}
	s.d.Log.Info("build canceled", zap.String("build", req.GetBuildId()), zap.Int("running_jobs_stopped", len(res.Canceled)))
	return &kilnv1.CancelBuildResponse{Build: res.Build}, nil
}

// ListAgents serves the agents from the local state.
func (s *ControlServer) ListAgents(context.Context, *kilnv1.ListAgentsRequest) (*kilnv1.ListAgentsResponse, error) {
	return &kilnv1.ListAgentsResponse{Agents: s.d.Store.Agents()}, nil
}
