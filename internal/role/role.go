// Package role names the access-control roles of a Kiln cluster and their
// order. Human roles are cumulative: viewer < developer < approver <
// operator < admin, each allowed everything the ones below it are. Two
// principals stand apart from that ladder: agent (a build host's token:
// its own session, blob transfers) and node (a coordinator proving the
// shared cluster key to a peer).
package role

import (
	"fmt"
	"strings"
)

// Role is an access level; the zero value is no role at all.
type Role int

// The roles, in increasing order of the human ladder, then the two
// principals outside it.
const (
	None Role = iota
	Viewer
	Developer
	Approver
	Operator
	Admin
	// Agent is a build agent's token: AgentService and blob transfers.
	Agent
	// Node is a peer coordinator (cluster-internal RPCs).
	Node
)

var names = map[Role]string{
	Viewer: "viewer", Developer: "developer", Approver: "approver",
	Operator: "operator", Admin: "admin", Agent: "agent", Node: "node",
}

// String is the role's lower-case name ("" for None).
func (r Role) String() string { return names[r] }

// Human reports whether r is on the viewer..admin ladder.
func (r Role) Human() bool { return r >= Viewer && r <= Admin }

// AtLeast reports whether r grants everything min does on the human
// ladder. Agent and Node only satisfy themselves.
func (r Role) AtLeast(min Role) bool {
	if !min.Human() || !r.Human() {
		return r == min && r != None
	}
	return r >= min
}

// Parse maps a role name to its Role; "node" is internal and refused, as is
// anything unknown.
func Parse(s string) (Role, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for r, n := range names {
		if n == s && r != Node {
			return r, nil
		}
	}
	return None, fmt.Errorf("unknown role %q: want viewer, developer, approver, operator, admin or agent", s)
}

// ApproverPrefix marks an approvers entry that names a role rather than a
// token: "role:approver" lets any token of role approver or above decide.
const ApproverPrefix = "role:"
