package api

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/lifecycle"
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

// SubmitBuild validates the request and has the builds service
// (coordinator/builds) resolve its source and build file and commit it.
func (s *ControlServer) SubmitBuild(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.SubmitBuildResponse, error) {
	if err := validateSubmit(req); err != nil {
		return nil, err
	}
	if p, ok := acl.FromContext(ctx); ok {
		// With ACLs the submitter is the token, never a client-sent string.
		req.Submitter = p.Name
	}
	b, err := s.d.Builds.Submit(ctx, req)
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	return &kilnv1.SubmitBuildResponse{Build: fitBuild(b)}, nil
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
	case len(req.GetSubmitter()) > MaxNameBytes:
		return invalid("submitter: %d bytes; the limit is %d", len(req.GetSubmitter()), MaxNameBytes)
	case req.GetTimeoutMs() < 0:
		return invalid("timeout_ms: negative")
	case len(req.GetLabels()) > MaxLabelEntries:
		return invalid("labels: %d entries; the limit is %d", len(req.GetLabels()), MaxLabelEntries)
	}
	if err := validateEnv(req.GetEnv()); err != nil {
		return err
	}
	if err := validateLabels(req.GetLabels()); err != nil {
		return err
	}
	if !utf8.ValidString(req.GetSpecYaml()) {
		return invalid("spec_yaml: the build file is not valid UTF-8")
	}
	return nil
}

// validateLabels checks a label map's keys and the sizes of its keys and
// values (the count is the caller's: its message names the field).
func validateLabels(labels map[string]string) error {
	for k, v := range labels {
		switch {
		case k == "":
			return invalid("labels: a label has an empty key")
		case len(k) > MaxLabelBytes:
			return invalid("labels: key %.32q… is %d bytes; the limit is %d", k, len(k), MaxLabelBytes)
		case len(v) > MaxLabelBytes:
			return invalid("labels: value of %q is %d bytes; the limit is %d", k, len(v), MaxLabelBytes)
		}
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

// GetBuild serves a build from the local state.
func (s *ControlServer) GetBuild(ctx context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	b, ok := s.d.Store.Build(req.GetBuildId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
	}
	s.d.explainWaits(b)
	return &kilnv1.GetBuildResponse{Build: fitBuild(b)}, nil
}

// ListBuilds serves one page of builds, newest first, from the local
// state: at most req.limit builds and MaxListResponseBytes of them, so no
// answer exceeds the gRPC message limit whatever is stored.
func (s *ControlServer) ListBuilds(ctx context.Context, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, invalid("limit is negative")
	case limit == 0:
		limit = 50
	case limit > MaxListBuilds:
		limit = MaxListBuilds
	}
	var before uint64
	if t := req.GetPageToken(); t != "" {
		n, err := strconv.ParseUint(t, 10, 64)
		if err != nil || n == 0 {
			return nil, invalid("page_token: %.40q is not a token ListBuilds returned", t)
		}
		before = n
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	bs, next := s.d.Store.BuildsPage(before, limit, MaxListResponseBytes)
	resp := &kilnv1.ListBuildsResponse{Builds: bs}
	if next != 0 {
		resp.NextPageToken = strconv.FormatUint(next, 10)
	}
	return resp, nil
}

// fitBuild returns b, or its summary (jobs without specs) when b alone
// would not fit in a response: a build stored before --max-build-bytes
// existed can still be read.
func fitBuild(b *kilnv1.Build) *kilnv1.Build {
	if proto.Size(b) > MaxListResponseBytes {
		return state.Summarize(b)
	}
	return b
}

// WatchBuild sends the build now and on every change until it finishes. It
// wakes only for changes of this build (its row, jobs, logs' progress and
// test reports).
func (s *ControlServer) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.ControlService_WatchBuildServer) error {
	if err := s.d.readBarrier(stream.Context(), req.GetConsistency()); err != nil {
		return err
	}
	var last *kilnv1.Build
	for {
		view := s.d.Store.View()
		b, ok := view.Build(req.GetBuildId())
		if !ok {
			return status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
		}
		if last == nil || !proto.Equal(last, b) {
			if err := stream.Send(&kilnv1.WatchBuildResponse{Build: fitBuild(b)}); err != nil {
				return err
			}
			last = b
		}
		if lifecycle.BuildFinished(b.GetState()) {
			return nil
		}
		if err := view.Wait(stream.Context()); err != nil {
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
}

// logBatch bounds the chunks read from the state per job per read, and
// logReadBytes the data read from the log store per read.
const (
	logBatch     = 256
	logReadBytes = 1 << 20
)

// StreamLogs sends the committed log of the current attempt of each job.
// With follow it keeps going until every selected job is finished, waking
// only for changes of the build and of the selected jobs and their logs.
func (s *ControlServer) StreamLogs(req *kilnv1.StreamLogsRequest, stream kilnv1.ControlService_StreamLogsServer) error {
	if err := s.d.readBarrier(stream.Context(), req.GetConsistency()); err != nil {
		return err
	}
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
			if !lifecycle.JobFinished(j.GetState()) {
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
				// Logs committed before the log store existed are in the
				// state (legacy AppendLogs); the rest are read from the log
				// store, up to the position this view committed.
				chunks := view.Logs(j.GetId(), p.attempt, p.seq, logBatch)
				if len(chunks) == 0 && len(j.GetLogDigest()) > 0 {
					var err error
					chunks, err = s.d.Logs.Read(stream.Context(), j.GetId(), p.attempt, p.seq, j.GetLogSeq(), logReadBytes)
					if err != nil {
						return s.d.toStatus(err)
					}
				}
				for _, c := range chunks {
					if err := stream.Send(&kilnv1.StreamLogsResponse{
						JobId: j.GetId(), JobKey: j.GetKey(), Attempt: c.GetAttempt(), Seq: c.GetSeq(), Data: c.GetData(),
					}); err != nil {
						return err
					}
					p.seq = c.GetSeq()
				}
				if len(chunks) == 0 || p.seq >= j.GetLogSeq() {
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
	return &kilnv1.CancelBuildResponse{Build: fitBuild(res.Build)}, nil
}

// ListAgents serves one page of agents, sorted by name, from the local
// state (at most req.page_size agents and MaxListResponseBytes).
func (s *ControlServer) ListAgents(ctx context.Context, req *kilnv1.ListAgentsRequest) (*kilnv1.ListAgentsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size is negative")
	case size == 0 || size > MaxListAgents:
		size = MaxListAgents
	}
	if len(req.GetPageToken()) > MaxNameBytes {
		return nil, invalid("page_token: %d bytes; not a token ListAgents returned", len(req.GetPageToken()))
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	agents, next := s.d.Store.AgentsPage(req.GetPageToken(), size, MaxListResponseBytes)
	return &kilnv1.ListAgentsResponse{Agents: agents, NextPageToken: next}, nil
}
