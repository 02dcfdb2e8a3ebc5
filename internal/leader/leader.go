// Package leader carries "not the leader" answers between coordinators and
// their clients. A coordinator that cannot serve a request because it is not
// the Raft leader answers codes.Unavailable with a kilnv1.NotLeader detail;
// clients read the detail with Hint and retry at the named address. Follow
// is the one loop that does so (internal/client and the agent use it).
// Nothing here matches error strings.
package leader

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// NotLeaderError returns the status error a follower answers with. leaderID
// and leaderAddr may be empty while no leader is known (during an election).
func NotLeaderError(leaderID, leaderAddr string) error {
	msg := "this coordinator is not the leader"
	switch {
	case leaderAddr != "":
		msg += "; the leader is " + leaderID + " at " + leaderAddr
	default:
		msg += " and no leader is known yet; retry shortly"
	}
	st := status.New(codes.Unavailable, msg)
	withDetail, err := st.WithDetails(&kilnv1.NotLeader{LeaderId: leaderID, LeaderGrpcAddr: leaderAddr})
	if err != nil {
		return st.Err()
	}
	return withDetail.Err()
}

// Hint reports whether err is a "not the leader" answer, and the leader's
// gRPC address when the answering node knew it (addr may be empty).
func Hint(err error) (addr string, ok bool) {
	if err == nil {
		return "", false
	}
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.Unavailable {
		return "", false
	}
	for _, d := range st.Details() {
		if nl, isNL := d.(*kilnv1.NotLeader); isNL {
			return nl.GetLeaderGrpcAddr(), true
		}
	}
	return "", false
}

// IsNotLeader reports whether err is a "not the leader" answer.
func IsNotLeader(err error) bool {
	_, ok := Hint(err)
	return ok
}
