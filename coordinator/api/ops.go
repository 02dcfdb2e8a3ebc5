package api

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/queue"
	"github.com/kiln-ci/kiln/coordinator/stats"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Queue listing limits (and MaxListResponseBytes).
const (
	DefaultQueueLimit = 1000
	MaxQueueLimit     = 10000
)

// OpsServer implements kilnv1.OpsServiceServer: the queue explanation
// (coordinator/queue) and delivery statistics (coordinator/stats), both
// reads of the local state after the read barrier.
type OpsServer struct {
	kilnv1.UnimplementedOpsServiceServer
	d *Deps
}

// NewOpsServer returns the ops service.
func NewOpsServer(d *Deps) *OpsServer { return &OpsServer{d: d} }

// ListQueue explains every job that has not started.
func (s *OpsServer) ListQueue(ctx context.Context, req *kilnv1.ListQueueRequest) (*kilnv1.ListQueueResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, invalid("limit is negative")
	case limit == 0:
		limit = DefaultQueueLimit
	case limit > MaxQueueLimit:
		return nil, invalid("limit: %d; at most %d", limit, MaxQueueLimit)
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	now := s.d.now()
	jobs := queue.Explain(s.d.Store.Reader(), now)
	resp := &kilnv1.ListQueueResponse{Total: int32(len(jobs)), NowUnixMs: now.UnixMilli()}
	// At most limit jobs and MaxListResponseBytes of them, so the answer
	// always fits in a gRPC message; Total still counts every job.
	size := 0
	for _, j := range jobs {
		if len(resp.Jobs) == limit {
			break
		}
		if size += proto.Size(j) + 8; size > MaxListResponseBytes {
			break
		}
		resp.Jobs = append(resp.Jobs, j)
	}
	return resp, nil
}

// GetStats computes the delivery statistics (coordinator/stats) of the
// builds that match the request, from the local state after the read
// barrier.
func (s *OpsServer) GetStats(ctx context.Context, req *kilnv1.GetStatsRequest) (*kilnv1.GetStatsResponse, error) {
	switch {
	case req.GetSinceMs() < 0:
		return nil, invalid("since_ms is negative")
	case len(req.GetRepo()) > MaxNameBytes:
		return nil, invalid("repo: %d bytes; the limit is %d", len(req.GetRepo()), MaxNameBytes)
	case len(req.GetPipeline()) > MaxNameBytes:
		return nil, invalid("pipeline: %d bytes; the limit is %d", len(req.GetPipeline()), MaxNameBytes)
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	now := s.d.now().UnixMilli()
	f := stats.Filter{Repo: req.GetRepo(), Pipeline: req.GetPipeline()}
	if since := req.GetSinceMs(); since > 0 {
		f.From = max(1, now-since)
	}
	r := s.d.Store.Reader()
	var builds []*kilnv1.Build
	r.EachBuild(func(h *kilnv1.Build) bool {
		if f.Match(h) {
			// Read-only views of the stored messages: Compute copies
			// nothing and changes nothing.
			builds = append(builds, &kilnv1.Build{Id: h.GetId(), Name: h.GetName(), State: h.GetState(),
				CreatedUnixMs: h.GetCreatedUnixMs(), StartedUnixMs: h.GetStartedUnixMs(), FinishedUnixMs: h.GetFinishedUnixMs(),
				Source: h.GetSource(), Jobs: r.BuildJobs(h.GetId())})
		}
		return true
	})
	st := stats.Compute(builds, f)
	st.ToUnixMs = now
	return &kilnv1.GetStatsResponse{Stats: st}, nil
}

// explainWaits fills wait_reason of the build's jobs that have not
// started (on copies: the jobs are shared with the store).
func (d *Deps) explainWaits(b *kilnv1.Build) {
	if lifecycle.BuildFinished(b.GetState()) {
		return
	}
	var why map[string]*kilnv1.WaitingJob
	for i, j := range b.GetJobs() {
		switch j.GetState() {
		case kilnv1.JobState_JOB_STATE_WAITING, kilnv1.JobState_JOB_STATE_QUEUED, kilnv1.JobState_JOB_STATE_BLOCKED:
		default:
			continue
		}
		if why == nil {
			why = queue.ByJob(queue.ExplainBuild(d.Store.Reader(), b.GetId(), d.now()))
		}
		if w, ok := why[j.GetId()]; ok {
			c := proto.Clone(j).(*kilnv1.Job)
			c.WaitReason = w.GetReason().GetMessage()
			b.Jobs[i] = c
		}
	}
}
