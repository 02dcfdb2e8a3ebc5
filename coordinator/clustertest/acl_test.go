package clustertest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// accessCall runs fn with an AccessService client through cl.
func accessCall(ctx context.Context, cl *client.Client, fn func(context.Context, kilnv1.AccessServiceClient) error) error {
	return cl.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return fn(ctx, kilnv1.NewAccessServiceClient(conn))
	})
}

// bootstrapACL starts a 3-node cluster with --acl, bootstraps it and
// creates one token per role (named after the role, the approver "alice").
func bootstrapACL(t *testing.T, ctx context.Context) (*Cluster, map[string]string) {
	t.Helper()
	c := Start(t, 3, Options{ACL: true})
	var admin string
	err := accessCall(ctx, c.Client(), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		resp, err := ac.BootstrapToken(ctx, &kilnv1.BootstrapTokenRequest{})
		admin = resp.GetSecret()
		return err
	})
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	toks := map[string]string{"admin": admin}
	adm := c.ClientWithToken(admin)
	for name, role := range map[string]string{"viewer": "viewer", "dev": "developer", "alice": "approver", "carol": "approver",
		"ops": "operator", "agent": "agent"} {
		err := accessCall(ctx, adm, func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
			resp, err := ac.CreateToken(ctx, &kilnv1.CreateTokenRequest{Name: name, Role: role})
			toks[name] = resp.GetSecret()
			return err
		})
		if err != nil {
			t.Fatalf("create token %s: %v", name, err)
		}
	}
	return c, toks
}

// Every role × operation pair against a real 3-node cluster over gRPC:
// an allowed call gets past the interceptor (its answer may still be
// NotFound or InvalidArgument for the dummy arguments), a refused one is
// Unauthenticated (no token) or PermissionDenied naming the needed role.
func TestACLRoleOperationMatrix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, toks := bootstrapACL(t, ctx)

	// A second bootstrap is refused.
	err := accessCall(ctx, c.Client(), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		_, err := ac.BootstrapToken(ctx, &kilnv1.BootstrapTokenRequest{})
		return err
	})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second bootstrap: %v, want FailedPrecondition", err)
	}

	type op struct {
		name    string
		allowed string // the principals allowed, by token name
		call    func(context.Context, grpc.ClientConnInterface) error
	}
	const (
		readers    = "viewer dev alice ops admin"
		developers = "dev alice ops admin"
		approvers  = "alice ops admin"
		operators  = "ops admin"
		admins     = "admin"
	)
	cs := kilnv1.NewControlServiceClient
	ops := []op{
		{"ListBuilds", readers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
			return err
		}},
		{"GetBuild", readers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: "999"})
			return err
		}},
		{"ListAgents", readers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
			return err
		}},
		{"ClusterStatus", readers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewClusterServiceClient(cc).Status(ctx, &kilnv1.StatusRequest{})
			return err
		}},
		{"SubmitBuild", developers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "true", Labels: map[string]string{"none": "x"}})
			return err
		}},
		{"CancelBuild", developers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).CancelBuild(ctx, &kilnv1.CancelBuildRequest{BuildId: "999"})
			return err
		}},
		{"RetryBuild", developers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: "999"})
			return err
		}},
		{"DecideApproval", approvers, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).DecideApproval(ctx, &kilnv1.DecideApprovalRequest{BuildId: "999", Step: "x", By: "x"})
			return err
		}},
		{"AddRepo", operators, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "", Url: ""})
			return err
		}},
		{"RemoveRepo", operators, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := cs(cc).RemoveRepo(ctx, &kilnv1.RemoveRepoRequest{Name: "nope"})
			return err
		}},
		{"SetSecret", operators, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).SetSecret(ctx, &kilnv1.SetSecretRequest{Name: "X"})
			return err
		}},
		{"ListSecrets", operators, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).ListSecrets(ctx, &kilnv1.ListSecretsRequest{})
			return err
		}},
		{"DeleteSecret", operators, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).DeleteSecret(ctx, &kilnv1.DeleteSecretRequest{Name: "NOPE"})
			return err
		}},
		{"CreateToken", admins, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).CreateToken(ctx, &kilnv1.CreateTokenRequest{Name: "Bad Name", Role: "viewer"})
			return err
		}},
		{"ListTokens", admins, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).ListTokens(ctx, &kilnv1.ListTokensRequest{})
			return err
		}},
		{"RevokeToken", admins, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).RevokeToken(ctx, &kilnv1.RevokeTokenRequest{Name: "nope"})
			return err
		}},
		{"ListAudit", admins, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewAccessServiceClient(cc).ListAudit(ctx, &kilnv1.ListAuditRequest{})
			return err
		}},
		{"Leave", admins, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewClusterServiceClient(cc).Leave(ctx, &kilnv1.LeaveRequest{})
			return err
		}},
		{"ReadIndex", "", func(ctx context.Context, cc grpc.ClientConnInterface) error {
			_, err := kilnv1.NewClusterServiceClient(cc).ReadIndex(ctx, &kilnv1.ReadIndexRequest{})
			return err
		}},
		{"AgentConnect", "agent", func(ctx context.Context, cc grpc.ClientConnInterface) error {
			st, err := kilnv1.NewAgentServiceClient(cc).Connect(ctx)
			if err != nil {
				return err
			}
			_ = st.CloseSend()
			_, err = st.Recv()
			return err
		}},
		{"Upload", developers + " agent", func(ctx context.Context, cc grpc.ClientConnInterface) error {
			st, err := kilnv1.NewBlobServiceClient(cc).Upload(ctx)
			if err != nil {
				return err
			}
			_, err = st.CloseAndRecv()
			return err
		}},
		{"Download", readers + " agent", func(ctx context.Context, cc grpc.ClientConnInterface) error {
			st, err := kilnv1.NewBlobServiceClient(cc).Download(ctx, &kilnv1.DownloadRequest{Sha256: "bad"})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
	}
	principals := []string{"anonymous", "viewer", "dev", "alice", "ops", "admin", "agent"}
	// Each principal talks to one coordinator directly (no leader
	// following), so followers are covered too: a refusal happens before
	// any redirect.
	for i, who := range principals {
		addr := c.Nodes[i%len(c.Nodes)].GRPCAddr
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if who != "anonymous" {
			opts = append(opts, grpc.WithPerRPCCredentials(authn.Bearer(toks[who])))
		}
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, o := range ops {
			t.Run(fmt.Sprintf("%s/%s", who, o.name), func(t *testing.T) {
				want := strings.Contains(" "+o.allowed+" ", " "+who+" ")
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				defer ccancel()
				err := o.call(cctx, conn)
				if err == io.EOF {
					err = nil
				}
				code := status.Code(err)
				refused := code == codes.Unauthenticated || (code == codes.PermissionDenied && strings.Contains(err.Error(), " needs "))
				if refused == want {
					t.Fatalf("allowed=%v but got %v", want, err)
				}
				if !refused {
					return
				}
				if who == "anonymous" && code != codes.Unauthenticated {
					t.Fatalf("anonymous: %v, want Unauthenticated", err)
				}
				if who != "anonymous" && code != codes.PermissionDenied {
					t.Fatalf("%v, want PermissionDenied", err)
				}
			})
		}
	}
}

// The submitter and every approval are the token's name, never a string
// the client sends; approvers accept token names and role:NAME.
func TestACLRecordsTokenNames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, toks := bootstrapACL(t, ctx)
	spec := `name: gated
steps:
  - key: by-name
    approval: {approvers: [alice]}
  - key: by-role
    approval: {approvers: ["role:operator"]}
`
	dev := c.ClientWithToken(toks["dev"])
	var b *kilnv1.Build
	err := Control(ctx, dev, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, Submitter: "mallory@evil"})
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if b.GetSubmitter() != "dev" {
		t.Fatalf("submitter %q, want the token name dev", b.GetSubmitter())
	}
	id := b.GetId()
	Eventually(t, 10*time.Second, func() bool {
		got, ok := c.Leader().C.Store().Build(id)
		return ok && got.GetState() == kilnv1.BuildState_BUILD_STATE_BLOCKED
	}, "gates block")
	decide := func(who, step string) error {
		return Control(ctx, c.ClientWithToken(toks[who]), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			// The client claims to be alice; only the token counts.
			_, err := cc.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: reqID(t, 1), BuildId: id, Step: step, Approve: true, By: "alice", Comment: "ok by " + who})
			return err
		})
	}
	if err := decide("dev", "by-name"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs role approver") {
		t.Fatalf("developer approving: %v", err)
	}
	if err := decide("carol", "by-name"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "carol may not approve") {
		t.Fatalf("carol approving alice's gate: %v", err)
	}
	if err := decide("alice", "by-role"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("approver approving an operator gate: %v", err)
	}
	if err := decide("alice", "by-name"); err != nil {
		t.Fatalf("alice: %v", err)
	}
	if err := decide("ops", "by-role"); err != nil {
		t.Fatalf("ops: %v", err)
	}
	b = waitBuild(t, c, id, 20*time.Second)
	for _, j := range b.GetJobs() {
		want := map[string]string{"by-name": "alice", "by-role": "ops"}[j.GetKey()]
		if a := j.GetApproval(); !a.GetApproved() || a.GetBy() != want {
			t.Errorf("%s: approval %v, want by %s", j.GetKey(), a, want)
		}
	}

	// The audit log names the tokens, with the caller's address.
	var recs []*kilnv1.AuditRecord
	err = accessCall(ctx, c.ClientWithToken(toks["admin"]), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		resp, err := ac.ListAudit(ctx, &kilnv1.ListAuditRequest{})
		recs = resp.GetRecords()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range recs {
		if r.GetPeerAddr() == "" || r.GetTimeUnixMs() == 0 {
			t.Errorf("audit record without address or time: %v", r)
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %s", r.GetWho(), r.GetMethod(), r.GetCode(), r.GetWhat()))
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{
		"anonymous BootstrapToken OK token=admin role=admin",
		"admin CreateToken OK token=alice role=approver",
		"dev SubmitBuild OK build=" + id,
		"carol DecideApproval PermissionDenied approve build=" + id + " step=by-name",
		"alice DecideApproval OK approve build=" + id + " step=by-name comment=\"ok by alice\"",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("audit log lacks %q:\n%s", want, all)
		}
	}

	// A revoked token is refused at once, on every coordinator.
	err = accessCall(ctx, c.ClientWithToken(toks["admin"]), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		_, err := ac.RevokeToken(ctx, &kilnv1.RevokeTokenRequest{Name: "viewer"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		Eventually(t, 5*time.Second, func() bool {
			conn, err := grpc.NewClient(n.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithPerRPCCredentials(authn.Bearer(toks["viewer"])))
			if err != nil {
				return false
			}
			defer conn.Close()
			_, err = kilnv1.NewControlServiceClient(conn).ListBuilds(ctx, &kilnv1.ListBuildsRequest{Consistency: kilnv1.Consistency_CONSISTENCY_STALE})
			return status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "revoked")
		}, "node "+n.ID+" refuses the revoked token")
	}
}

// A one-time agent join token is redeemed through Raft exactly once, even
// by concurrent callers, and is never accepted as a bearer token.
func TestJoinTokenRedeemsOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, toks := bootstrapACL(t, ctx)
	var join string
	err := accessCall(ctx, c.ClientWithToken(toks["admin"]), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		resp, err := ac.CreateToken(ctx, &kilnv1.CreateTokenRequest{Name: "linux-pool", Agent: true, TtlMs: 60_000})
		join = resp.GetSecret()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Leader().GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(authn.Bearer(join)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := kilnv1.NewControlServiceClient(conn).ListBuilds(ctx, &kilnv1.ListBuildsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("join token as bearer: %v", err)
	}
	tokens := c.Leader().C.Tokens()
	const n = 8
	type result struct {
		pool string
		err  error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			pool, err := tokens.Redeem(ctx, join)
			results <- result{pool, err}
		}()
	}
	ok := 0
	for range n {
		if r := <-results; r.err == nil {
			ok++
			if r.pool != "linux-pool" {
				t.Errorf("pool %q", r.pool)
			}
		} else if !strings.Contains(r.err.Error(), "already used") {
			t.Errorf("redeem: %v", r.err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d successful redemptions, want 1", ok)
	}
	if _, err := tokens.Redeem(ctx, "kiln_nope"); err == nil {
		t.Fatal("malformed join token redeemed")
	}
	// Every node sees the token used.
	for _, n := range c.Nodes {
		Eventually(t, 5*time.Second, func() bool {
			tok := n.C.Store().Token("linux-pool")
			return tok.GetRedeemed()
		}, "node "+n.ID+" sees the join token used")
	}
}
