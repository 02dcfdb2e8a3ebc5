package role

import "testing"

func TestOrderAndParse(t *testing.T) {
	ladder := []Role{Viewer, Developer, Approver, Operator, Admin}
	for i, r := range ladder {
		got, err := Parse(" " + r.String() + " ")
		if err != nil || got != r {
			t.Fatalf("Parse(%s) = %v, %v", r, got, err)
		}
		for j, min := range ladder {
			if r.AtLeast(min) != (i >= j) {
				t.Errorf("%s.AtLeast(%s) = %v", r, min, r.AtLeast(min))
			}
		}
		if r.AtLeast(Agent) || Agent.AtLeast(r) || Node.AtLeast(r) || r.AtLeast(Node) {
			t.Errorf("%s mixes with agent or node", r)
		}
	}
	if !Agent.AtLeast(Agent) || Agent.AtLeast(Node) || None.AtLeast(None) {
		t.Error("agent/node/none ordering")
	}
	for _, bad := range []string{"", "node", "root", "admins"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
