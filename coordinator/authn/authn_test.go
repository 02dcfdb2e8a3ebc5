package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEveryServedMethodIsClassified registers every service a coordinator
// serves and checks that each method has a rule: an unclassified method
// would be refused to everyone.
func TestEveryServedMethodIsClassified(t *testing.T) {
	s := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(s, kilnv1.UnimplementedControlServiceServer{})
	kilnv1.RegisterAgentServiceServer(s, kilnv1.UnimplementedAgentServiceServer{})
	kilnv1.RegisterClusterServiceServer(s, kilnv1.UnimplementedClusterServiceServer{})
	kilnv1.RegisterBlobServiceServer(s, kilnv1.UnimplementedBlobServiceServer{})
	kilnv1.RegisterIdentityServiceServer(s, kilnv1.UnimplementedIdentityServiceServer{})
	kilnv1.RegisterAccessServiceServer(s, kilnv1.UnimplementedAccessServiceServer{})
	kilnv1.RegisterOpsServiceServer(s, kilnv1.UnimplementedOpsServiceServer{})
	kilnv1.RegisterLogReplicationServiceServer(s, kilnv1.UnimplementedLogReplicationServiceServer{})
	kilnv1.RegisterDeployServiceServer(s, kilnv1.UnimplementedDeployServiceServer{})
	healthpb.RegisterHealthServer(s, health.NewServer())
	reflection.Register(s)
	if err := Check(s.GetServiceInfo()); err != nil {
		t.Fatal(err)
	}
	if _, ok := RuleFor("/kiln.v1.ControlService/NoSuchMethodYet"); !ok {
		t.Error("service wildcard did not match")
	}
	if _, ok := RuleFor("/kiln.v1.Unknown/X"); ok {
		t.Error("an unknown service has a rule")
	}
}

// tlsPeer is a context as the gRPC server builds it for a TLS connection
// whose client presented a certificate for id (nil: none).
func tlsPeer(id *tlsutil.Identity) context.Context {
	state := tls.ConnectionState{}
	if id != nil {
		u, _ := url.Parse(id.URI().String())
		state.VerifiedChains = [][]*x509.Certificate{{{URIs: []*url.URL{u}}}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

func TestAuthorizeByRole(t *testing.T) {
	agent := &tlsutil.Identity{Role: tlsutil.RoleAgent, Name: "a1"}
	client := &tlsutil.Identity{Role: tlsutil.RoleClient, Name: "ops"}
	coord := &tlsutil.Identity{Role: tlsutil.RoleCoordinator, Name: "n1"}
	cases := []struct {
		method string
		who    *tlsutil.Identity
		want   codes.Code
	}{
		{"/kiln.v1.AgentService/Connect", agent, codes.OK},
		{"/kiln.v1.AgentService/Connect", nil, codes.Unauthenticated},
		{"/kiln.v1.AgentService/Connect", client, codes.PermissionDenied},
		{"/kiln.v1.AgentService/Connect", coord, codes.PermissionDenied},
		{"/kiln.v1.ControlService/SubmitBuild", nil, codes.OK},
		{"/kiln.v1.ControlService/SubmitBuild", client, codes.OK},
		{"/kiln.v1.ControlService/CancelBuild", agent, codes.PermissionDenied},
		{"/kiln.v1.ClusterService/Join", coord, codes.OK},
		{"/kiln.v1.ClusterService/Join", client, codes.PermissionDenied},
		{"/kiln.v1.ClusterService/Join", agent, codes.PermissionDenied},
		{"/kiln.v1.ClusterService/Join", nil, codes.Unauthenticated},
		{"/kiln.v1.ClusterService/ReadIndex", nil, codes.Unauthenticated},
		{"/kiln.v1.ClusterService/Leave", nil, codes.Unauthenticated},
		{"/kiln.v1.ClusterService/Leave", client, codes.OK},
		{"/kiln.v1.BlobService/Replicate", agent, codes.PermissionDenied},
		{"/kiln.v1.BlobService/Replicate", coord, codes.OK},
		{"/kiln.v1.BlobService/Upload", agent, codes.OK},
		{"/kiln.v1.Unknown/Method", coord, codes.PermissionDenied},
	}
	for _, c := range cases {
		ctx, err := Authorize(tlsPeer(c.who), c.method)
		if got := status.Code(err); got != c.want {
			t.Errorf("%s by %v: %v (%v), want %v", c.method, c.who, got, err, c.want)
			continue
		}
		if err != nil {
			continue
		}
		id, ok := FromContext(ctx)
		if (c.who != nil) != ok || (ok && id != *c.who) {
			t.Errorf("%s by %v: identity in context %v %v", c.method, c.who, id, ok)
		}
	}
	// A connection that is not TLS is refused outright.
	plain := peer.NewContext(context.Background(), &peer.Peer{})
	if _, err := Authorize(plain, "/kiln.v1.ControlService/GetBuild"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("plaintext peer: %v", err)
	}
	// A verified certificate without an identity has no role.
	bad := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		VerifiedChains: [][]*x509.Certificate{{{}}}}}})
	if _, err := Authorize(bad, "/kiln.v1.ControlService/GetBuild"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("certificate without identity: %v", err)
	}
}
