package cli

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/leader"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fake is an in-process coordinator: a ControlService and ClusterService
// over an in-memory build list, with knobs to inject failures.
type fake struct {
	kilnv1.UnimplementedControlServiceServer
	kilnv1.UnimplementedClusterServiceServer
	addr string

	mu sync.Mutex
	// followerOf makes the node a follower answering NotLeader for writes.
	followerOf string
	// failFirstSubmit commits the first submit and then answers
	// Unavailable, as a leader losing leadership mid-request does.
	failFirstSubmit bool
	// newBuild shapes a submitted build (state, jobs).
	newBuild func(b *kilnv1.Build)
	builds   map[string]*kilnv1.Build
	order    []string
	byReq    map[string]string
	submits  []*kilnv1.SubmitBuildRequest
	cancels  []*kilnv1.CancelBuildRequest
	// logs per build id, in build order.
	logs map[string][]*kilnv1.StreamLogsResponse
	// breakAfter > 0 breaks the first follow stream after that many chunks.
	breakAfter int
	// downAfterBreak takes the node down when breakAfter breaks a stream.
	downAfterBreak bool
	// down answers reads Unavailable, as a coordinator that died does.
	down bool
	// lagging > 0 answers that many stream calls NotFound, as a restarted
	// coordinator still catching up does.
	lagging int
	// watchBreak > 0 makes that many WatchBuild streams send the build as
	// running and then break.
	watchBreak int
	watchReqs  int
	gets       int
	pages      int // ListBuilds calls
	streamReqs []*kilnv1.StreamLogsRequest
	agents     []*kilnv1.Agent
	status     *kilnv1.StatusResponse
	left       []string
}

func newFake() *fake {
	return &fake{builds: map[string]*kilnv1.Build{}, byReq: map[string]string{}, logs: map[string][]*kilnv1.StreamLogsResponse{}}
}

func (f *fake) serve(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, f)
	kilnv1.RegisterClusterServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	f.addr = lis.Addr().String()
	return f.addr
}

func (f *fake) addBuild(b *kilnv1.Build) {
	f.builds[b.Id] = b
	f.order = append(f.order, b.Id)
}

func (f *fake) SubmitBuild(_ context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.SubmitBuildResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, req)
	if f.followerOf != "" {
		return nil, leader.NotLeaderError("leader", f.followerOf)
	}
	if id, ok := f.byReq[req.RequestId]; ok {
		return &kilnv1.SubmitBuildResponse{Build: f.builds[id]}, nil
	}
	b := &kilnv1.Build{Id: fmt.Sprint(len(f.builds) + 1), Name: req.Name, Submitter: req.Submitter,
		State: kilnv1.BuildState_BUILD_STATE_QUEUED, RequestId: req.RequestId,
		Jobs: []*kilnv1.Job{{Key: "main", State: kilnv1.JobState_JOB_STATE_QUEUED}}}
	if f.newBuild != nil {
		f.newBuild(b)
	}
	f.addBuild(b)
	f.byReq[req.RequestId] = b.Id
	if f.failFirstSubmit {
		f.failFirstSubmit = false
		return nil, status.Error(codes.Unavailable, "leadership lost while committing")
	}
	return &kilnv1.SubmitBuildResponse{Build: b}, nil
}

// refuse is the answer of a node that is down or behind, if it is. Call it
// with f.mu held.
func (f *fake) refuse(id string) error {
	switch {
	case f.down:
		return status.Error(codes.Unavailable, "coordinator down")
	case f.lagging > 0:
		f.lagging--
		return status.Errorf(codes.NotFound, "build %s not found", id)
	}
	return nil
}

func (f *fake) GetBuild(_ context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.down {
		return nil, status.Error(codes.Unavailable, "coordinator down")
	}
	b, ok := f.builds[req.BuildId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "build %s not found", req.BuildId)
	}
	return &kilnv1.GetBuildResponse{Build: b}, nil
}

func (f *fake) ListBuilds(_ context.Context, req *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Pages of at most 2 builds, so every list longer than that pages;
	// the token is the index in f.order to continue below.
	resp := &kilnv1.ListBuildsResponse{}
	start := len(f.order) - 1
	if req.PageToken != "" {
		n, err := strconv.Atoi(req.PageToken)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "page_token %q", req.PageToken)
		}
		start = n
	}
	f.pages++
	for i := start; i >= 0; i-- {
		if (req.Limit > 0 && len(resp.Builds) == int(req.Limit)) || len(resp.Builds) == 2 {
			resp.NextPageToken = strconv.Itoa(i)
			break
		}
		resp.Builds = append(resp.Builds, f.builds[f.order[i]])
	}
	return resp, nil
}

func (f *fake) CancelBuild(_ context.Context, req *kilnv1.CancelBuildRequest) (*kilnv1.CancelBuildResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, req)
	b, ok := f.builds[req.BuildId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "build %s not found", req.BuildId)
	}
	if !lifecycle.BuildFinished(b.State) {
		b.State = kilnv1.BuildState_BUILD_STATE_CANCELED
		b.Reason = req.Reason
	}
	return &kilnv1.CancelBuildResponse{Build: b}, nil
}

func (f *fake) StreamLogs(req *kilnv1.StreamLogsRequest, stream grpc.ServerStreamingServer[kilnv1.StreamLogsResponse]) error {
	f.mu.Lock()
	f.streamReqs = append(f.streamReqs, req)
	first := len(f.streamReqs) == 1
	chunks := f.logs[req.BuildId]
	breakAfter := f.breakAfter
	err := f.refuse(req.BuildId)
	f.mu.Unlock()
	if err != nil {
		return err
	}
	after := map[string]uint64{}
	for _, p := range req.After {
		after[fmt.Sprint(p.JobKey, "/", p.Attempt)] = p.Seq
	}
	sent := 0
	for _, c := range chunks {
		if req.JobKey != "" && c.JobKey != req.JobKey {
			continue
		}
		if req.Attempt != 0 && c.Attempt != req.Attempt {
			continue
		}
		// Deliberately resend the last chunk the client has: the client
		// must drop it.
		if pos, ok := after[fmt.Sprint(c.JobKey, "/", c.Attempt)]; ok && c.Seq < pos {
			continue
		}
		if first && req.Follow && breakAfter > 0 && sent == breakAfter {
			f.mu.Lock()
			f.down = f.downAfterBreak
			f.mu.Unlock()
			return status.Error(codes.Unavailable, "stream broken")
		}
		if err := stream.Send(c); err != nil {
			return err
		}
		sent++
	}
	return nil
}

func (f *fake) WatchBuild(req *kilnv1.WatchBuildRequest, stream grpc.ServerStreamingServer[kilnv1.WatchBuildResponse]) error {
	f.mu.Lock()
	f.watchReqs++
	if err := f.refuse(req.BuildId); err != nil {
		f.mu.Unlock()
		return err
	}
	b, ok := f.builds[req.BuildId]
	if !ok {
		f.mu.Unlock()
		return status.Errorf(codes.NotFound, "build %s not found", req.BuildId)
	}
	b = proto.Clone(b).(*kilnv1.Build)
	broken := f.watchBreak > 0
	if broken {
		f.watchBreak--
	}
	f.mu.Unlock()
	if broken {
		running := proto.Clone(b).(*kilnv1.Build)
		running.State = kilnv1.BuildState_BUILD_STATE_RUNNING
		if err := stream.Send(&kilnv1.WatchBuildResponse{Build: running}); err != nil {
			return err
		}
		return status.Error(codes.Unavailable, "stream broken")
	}
	return stream.Send(&kilnv1.WatchBuildResponse{Build: b})
}

func (f *fake) ListAgents(_ context.Context, req *kilnv1.ListAgentsRequest) (*kilnv1.ListAgentsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// One agent per page: the token is the name of the last one sent.
	for i, a := range f.agents {
		if req.PageToken == "" || a.Name > req.PageToken {
			resp := &kilnv1.ListAgentsResponse{Agents: []*kilnv1.Agent{a}}
			if i < len(f.agents)-1 {
				resp.NextPageToken = a.Name
			}
			return resp, nil
		}
	}
	return &kilnv1.ListAgentsResponse{}, nil
}

func (f *fake) Status(context.Context, *kilnv1.StatusRequest) (*kilnv1.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, nil
}

func (f *fake) Leave(_ context.Context, req *kilnv1.LeaveRequest) (*kilnv1.LeaveResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.followerOf != "" {
		return nil, leader.NotLeaderError("leader", f.followerOf)
	}
	f.left = append(f.left, req.NodeId)
	return &kilnv1.LeaveResponse{}, nil
}

// chunk is a log chunk for the fake.
func chunk(key string, attempt uint32, seq uint64, data string) *kilnv1.StreamLogsResponse {
	return &kilnv1.StreamLogsResponse{JobId: "1." + key, JobKey: key, Attempt: attempt, Seq: seq, Data: []byte(data)}
}
