package api

import (
	"context"
	"sort"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/internal/tlsutil"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ClusterServer implements kilnv1.ClusterServiceServer.
type ClusterServer struct {
	kilnv1.UnimplementedClusterServiceServer
	d *Deps
}

// NewClusterServer returns the cluster service.
func NewClusterServer(d *Deps) *ClusterServer { return &ClusterServer{d: d} }

// Status reports the members as this node sees them.
func (s *ClusterServer) Status(context.Context, *kilnv1.StatusRequest) (*kilnv1.StatusResponse, error) {
	leaderID, _ := s.d.Raft.Leader()
	known := map[string]*kilnv1.Node{}
	for _, n := range s.d.Store.Nodes() {
		known[n.GetId()] = n
	}
	members, err := s.d.Raft.Members()
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	resp := &kilnv1.StatusResponse{Leader: leaderID, NodeId: s.d.NodeID}
	for _, m := range members {
		id := string(m.ID)
		n := &kilnv1.Node{Id: id, RaftAddr: string(m.Address), Voter: m.Suffrage == raft.Voter}
		if k, ok := known[id]; ok {
			n.GrpcAddr = k.GetGrpcAddr()
		}
		switch {
		case id == leaderID:
			n.State = "leader"
			resp.LeaderGrpcAddr = n.GetGrpcAddr()
		case m.Suffrage != raft.Voter:
			n.State = "nonvoter"
		case leaderID == "":
			n.State = "unknown"
		default:
			n.State = "follower"
		}
		if id == s.d.NodeID && leaderID != id {
			n.State = s.d.Raft.State()
		}
		if s.d.MemberHealth != nil {
			n.Healthy = s.d.MemberHealth(id)
		}
		resp.Nodes = append(resp.Nodes, n)
	}
	sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].GetId() < resp.Nodes[j].GetId() })
	p := s.d.Raft.Progress()
	// The applied index is the state store's: Raft's own counts entries
	// handed to the state machine, not yet applied.
	resp.AppliedIndex = s.d.Store.LastIndex()
	resp.CommitIndex = p.CommitIndex
	resp.Term = p.Term
	resp.LastLogIndex = p.LastLogIndex
	resp.LastLogTerm = p.LastLogTerm
	resp.LastContactMs = p.LastContact.Milliseconds()
	return resp, nil
}

// ReadIndex is the leader's half of a linearizable read on a follower.
func (s *ClusterServer) ReadIndex(ctx context.Context, _ *kilnv1.ReadIndexRequest) (*kilnv1.ReadIndexResponse, error) {
	idx, err := s.d.Reads.ReadIndex(ctx)
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	return &kilnv1.ReadIndexResponse{Index: idx}, nil
}

// Join adds a coordinator as a non-voter and records its addresses. The
// leader's autopilot promotes it to voter once it has caught up and stayed
// healthy, so a slow or unreachable joiner never counts toward the quorum.
func (s *ClusterServer) Join(ctx context.Context, req *kilnv1.JoinRequest) (*kilnv1.JoinResponse, error) {
	if req.GetNodeId() == "" || req.GetRaftAddr() == "" || req.GetGrpcAddr() == "" {
		return nil, invalid("node_id, raft_addr and grpc_addr are required")
	}
	if id, ok := authn.FromContext(ctx); ok && (id.Role != tlsutil.RoleCoordinator || id.Name != req.GetNodeId()) {
		// A member's certificate names the one node id it may join as.
		return nil, status.Errorf(codes.PermissionDenied, "certificate %s cannot join as coordinator %q", id, req.GetNodeId())
	}
	if !s.d.Raft.IsLeader() {
		return nil, s.d.notLeader()
	}
	members, err := s.d.Raft.Members()
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	present := false
	for _, m := range members {
		if string(m.ID) == req.GetNodeId() && string(m.Address) == req.GetRaftAddr() {
			present = true
		}
	}
	if !present {
		s.d.Log.Info("adding coordinator as a non-voter", zap.String("node", req.GetNodeId()), zap.String("raft_addr", req.GetRaftAddr()))
		if err := s.d.Raft.AddNonvoter(req.GetNodeId(), req.GetRaftAddr()); err != nil {
			return nil, s.d.toStatus(err)
		}
	}
	if _, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{
		Id: req.GetNodeId(), GrpcAddr: req.GetGrpcAddr(), RaftAddr: req.GetRaftAddr(),
	}); err != nil {
		return nil, s.d.toStatus(err)
	}
	return &kilnv1.JoinResponse{}, nil
}

// Leave removes a coordinator.
func (s *ClusterServer) Leave(ctx context.Context, req *kilnv1.LeaveRequest) (*kilnv1.LeaveResponse, error) {
	if req.GetNodeId() == "" {
		return nil, invalid("node_id is required")
	}
	if !s.d.Raft.IsLeader() {
		return nil, s.d.notLeader()
	}
	s.d.Log.Info("removing coordinator", zap.String("node", req.GetNodeId()))
	if err := s.d.Raft.RemoveServer(req.GetNodeId()); err != nil {
		return nil, s.d.toStatus(err)
	}
	if _, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REMOVE_NODE, &fsmv1.RemoveNode{Id: req.GetNodeId()}); err != nil {
		return nil, s.d.toStatus(err)
	}
	return &kilnv1.LeaveResponse{}, nil
}
