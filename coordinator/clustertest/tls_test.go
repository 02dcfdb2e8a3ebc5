package clustertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/agent/identity"
	"github.com/kiln-ci/kiln/coordinator/enroll"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// onceTokens is a test-only join-token store: each token redeems once.
// Real clusters get the replicated token store of the ACL feature.
type onceTokens struct {
	mu     sync.Mutex
	tokens map[string]string
}

func (o *onceTokens) Redeem(_ context.Context, token string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pool, ok := o.tokens[token]
	if !ok {
		return "", fmt.Errorf("%w: unknown or already used", enroll.ErrInvalidToken)
	}
	delete(o.tokens, token)
	return pool, nil
}

// TestTLSClusterEnrollsAgentWithJoinToken: three coordinators joined over
// mutual TLS; an agent with only the CA and a join token enrolls, runs
// builds under the enrolled name, renews its short-lived certificate and
// keeps working; the spent token enrolls no one else.
func TestTLSClusterEnrollsAgentWithJoinToken(t *testing.T) {
	c := Start(t, 3, Options{TLS: &TLSOptions{
		JoinTokens:        &onceTokens{tokens: map[string]string{"join-1": "linux"}},
		AgentCertValidity: 6 * time.Second,
	}})
	cfg := c.AgentConfig("enrolled-1", map[string]string{"pool": "tls"}, 1)
	cfg.TLS.Cert, cfg.TLS.Key = "", ""
	cfg.JoinToken = "join-1"
	c.StartAgentConfig(cfg)

	// An artifact passed between steps: the agent uploads with its
	// certificate, the leader replicates to its peers over mutual TLS.
	spec := `stages:
  - steps:
      - key: produce
        commands: ["echo enrolled > out.txt"]
        artifacts: ["out.txt"]
  - steps:
      - key: consume
        commands: ["cat out.txt"]
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), SpecYaml: spec, SpecFilename: "tls.yaml"})
	b = waitBuild(t, c, b.GetId(), 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || b.GetJobs()[0].GetAgent() != "enrolled-1" {
		t.Fatalf("build: %s on %q (%s)", b.GetState(), b.GetJobs()[0].GetAgent(), b.GetReason())
	}
	if got := jobLog(c.Leader(), jobsByKey(b)["consume"]); !strings.HasSuffix(got, "enrolled\n") {
		t.Fatalf("consume log %q", got)
	}
	digests := c.Leader().C.Store().ArtifactDigests()
	if len(digests) != 1 {
		t.Fatalf("artifact digests %v, want one", digests)
	}
	var sha string
	for d := range digests {
		sha = d
	}
	for _, n := range c.Nodes {
		Eventually(t, 10*time.Second, func() bool { return n.C.HasBlob(sha) }, n.ID+" holds the artifact")
	}
	first, _, err := identity.Load(identity.Path(cfg.WorkDir))
	if err != nil {
		t.Fatal(err)
	}
	// Renewed two thirds into its 6s validity, i.e. within seconds.
	Eventually(t, 20*time.Second, func() bool {
		cur, _, err := identity.Load(identity.Path(cfg.WorkDir))
		return err == nil && cur.Leaf.NotAfter.After(first.Leaf.NotAfter)
	}, "the agent renews its certificate")
	// Once the first certificate has expired, new sessions use the renewed one.
	time.Sleep(time.Until(first.Leaf.NotAfter.Add(500 * time.Millisecond))) // waiting for a clock time, not for an event
	b = submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 2), Command: "echo renewed", Labels: map[string]string{"pool": "tls"}})
	if b = waitBuild(t, c, b.GetId(), 30*time.Second); b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build after renewal: %s (%s)", b.GetState(), b.GetReason())
	}

	// The token is spent: a second agent using it stops with PermissionDenied.
	cfg2 := c.AgentConfig("enrolled-2", nil, 1)
	cfg2.TLS.Cert, cfg2.TLS.Key = "", ""
	cfg2.JoinToken = "join-1"
	a2 := c.StartAgentConfig(cfg2)
	select {
	case err := <-a2.done:
		a2.cancel = nil
		if status.Code(unwrapStatus(err)) != codes.PermissionDenied || !strings.Contains(err.Error(), "join token") {
			t.Fatalf("second enrollment with a spent token: %v, want PermissionDenied", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an agent with a spent token is still running")
	}
}

// unwrapStatus finds the gRPC status error in err's chain.
func unwrapStatus(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		e = u.Unwrap()
	}
	return err
}
