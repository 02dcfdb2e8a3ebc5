package api

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestAgentNameComesFromTheCertificate(t *testing.T) {
	a1 := authn.WithIdentity(context.Background(), tlsutil.Identity{Role: tlsutil.RoleAgent, Name: "a1"})
	cases := []struct {
		ctx      context.Context
		name     string
		want     codes.Code
		wantName string
	}{
		{a1, "", codes.OK, "a1"},
		{a1, "a1", codes.OK, "a1"},
		{a1, "a2", codes.PermissionDenied, ""},
		{authn.WithIdentity(context.Background(), tlsutil.Identity{Role: tlsutil.RoleClient, Name: "a2"}), "a2", codes.PermissionDenied, ""},
		{context.Background(), "legacy", codes.OK, "legacy"}, // TLS off: the registered name stands
	}
	for _, c := range cases {
		reg := &kilnv1.Register{Name: c.name, Slots: 1}
		err := agentNameFromCertificate(c.ctx, reg)
		if status.Code(err) != c.want {
			t.Errorf("register %q: %v, want %v", c.name, err, c.want)
			continue
		}
		if err == nil && reg.GetName() != c.wantName {
			t.Errorf("register %q: session name %q, want %q", c.name, reg.GetName(), c.wantName)
		}
	}
}

func TestJoinOnlyUnderTheCertificatesNodeID(t *testing.T) {
	s := NewClusterServer(&Deps{})
	ctx := authn.WithIdentity(context.Background(), tlsutil.Identity{Role: tlsutil.RoleCoordinator, Name: "n4"})
	_, err := s.Join(ctx, &kilnv1.JoinRequest{NodeId: "n1", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("coordinator n4 joining as n1: %v, want PermissionDenied", err)
	}
}
