package api

import (
	"context"
	"sort"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

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
			n.State = stateName(s.d.Raft.Raft.State())
		}
		resp.Nodes = append(resp.Nodes, n)
	}
	sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].GetId() < resp.Nodes[j].GetId() })
	resp.AppliedIndex = s.d.Raft.Raft.AppliedIndex()
	resp.CommitIndex = s.d.Raft.Raft.CommitIndex()
	resp.Term = s.d.Raft.Raft.CurrentTerm()
	return resp, nil
}

func stateName(st raft.RaftState) string {
	switch st {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "unknown"
}

// Join adds a coordinator as a voter and records its addresses.
func (s *ClusterServer) Join(ctx context.Context, req *kilnv1.JoinRequest) (*kilnv1.JoinResponse, error) {
	if req.GetNodeId() == "" || req.GetRaftAddr() == "" || req.GetGrpcAddr() == "" {
		return nil, invalid("node_id, raft_addr and grpc_addr are required")
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
		s.d.Log.Info("adding coordinator", zap.String("node", req.GetNodeId()), zap.String("raft_addr", req.GetRaftAddr()))
		if err := s.d.Raft.AddVoter(req.GetNodeId(), req.GetRaftAddr()); err != nil {
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
