package integration

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// pki is a test's certificate directory, made with kilnctl tls.
type pki struct {
	h   *harness
	dir string
}

// newPKI creates a CA with `kilnctl tls ca create`.
func (h *harness) newPKI(name string) *pki {
	h.t.Helper()
	p := &pki{h: h, dir: filepath.Join(h.root, name)}
	if r := h.ctl(nil, "tls", "ca", "create", "--dir", p.dir); r.code != 0 {
		h.t.Fatalf("tls ca create: %s", r)
	}
	return p
}

// cert issues ROLE/NAME with `kilnctl tls cert create` and returns the
// certificate and key paths.
func (p *pki) cert(role, name string, hosts ...string) (certFile, keyFile string) {
	p.h.t.Helper()
	args := []string{"tls", "cert", "create", "--dir", p.dir, "--role", role, "--name", name}
	if len(hosts) > 0 {
		args = append(args, "--host", strings.Join(hosts, ","))
	}
	if r := p.h.ctl(nil, args...); r.code != 0 {
		p.h.t.Fatalf("tls cert create: %s", r)
	}
	return filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
}

func (p *pki) ca() string { return filepath.Join(p.dir, tlsutil.CACertFile) }

// creds are gRPC credentials trusting p's CA and presenting the pair
// (empty: no certificate).
func (p *pki) creds(t *testing.T, trust *pki, certFile, keyFile string) credentials.TransportCredentials {
	t.Helper()
	pool, err := tlsutil.LoadPool(trust.ca())
	if err != nil {
		t.Fatal(err)
	}
	var holder *tlsutil.Holder
	if certFile != "" {
		pair, _, err := tlsutil.LoadKeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		holder = tlsutil.NewHolder(pair)
	}
	return credentials.NewTLS(tlsutil.ClientConfig(pool, holder))
}

// startTLSCluster starts n coordinators with TLS certificates of p.
func (h *harness) startTLSCluster(p *pki, n int) *cluster {
	h.t.Helper()
	ports := freePorts(h.t, 2*n)
	c := &cluster{h: h}
	var initial []string
	for i := range n {
		nd := &node{
			id:       fmt.Sprintf("n%d", i+1),
			grpcAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			raftAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
		}
		nd.dataDir = filepath.Join(h.root, "data", nd.id)
		initial = append(initial, nd.id+"="+nd.raftAddr)
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		cert, key := p.cert("coordinator", nd.id, "127.0.0.1")
		nd.proc = h.startProc("coordinator-"+nd.id, "kiln-coordinator",
			"--node-id", nd.id, "--data-dir", nd.dataDir,
			"--grpc-addr", nd.grpcAddr, "--raft-addr", nd.raftAddr,
			"--initial-cluster", strings.Join(initial, ","),
			"--lease-ttl", leaseTTL, "--heartbeat-interval", heartbeatInterval,
			"--tls-ca", p.ca(), "--tls-cert", cert, "--tls-key", key,
		)
	}
	return c
}

// TestTLSClusterRefusesPlaintextAndForgedAgents: a 3-node cluster started
// with TLS answers no plaintext client, lets no plaintext or non-coordinator
// peer into Raft or the cluster-internal RPCs, runs a build for a real
// agent, and an attacker can neither register as that agent nor report on
// its job.
func TestTLSClusterRefusesPlaintextAndForgedAgents(t *testing.T) {
	h := newHarness(t)
	p := h.newPKI("pki")
	stranger := h.newPKI("stranger")
	c := h.startTLSCluster(p, 3)
	addrs := c.addrs()
	tlsEnv := []string{"KILN_TLS_CA=" + p.ca()}
	// Every kilnctl run of the harness trusts the cluster's CA from here
	// on (children inherit the variable); the plaintext checks unset it.
	t.Setenv("KILN_TLS_CA", p.ca())

	// Every node names the same leader, asked over TLS.
	eventually(t, 30*time.Second, func() error {
		leader := ""
		for _, n := range c.nodes {
			r := h.ctlEnv([]string{n.grpcAddr}, tlsEnv, "--timeout", "5s", "cluster", "status", "-o", "json")
			if r.code != 0 {
				return errors.New(r.String())
			}
			var st clusterJSON
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
				return fmt.Errorf("%s: %w", r, err)
			}
			l := st.Leader
			if l == "" {
				return fmt.Errorf("%s knows no leader: %s", n.id, r.stdout)
			}
			if leader != "" && l != leader {
				return fmt.Errorf("leaders %s and %s", leader, l)
			}
			leader = l
		}
		return nil
	})

	// A plaintext client gets no answer.
	if r := h.ctlEnv(addrs, []string{"KILN_TLS_CA="}, "--timeout", "3s", "cluster", "status"); r.code == 0 {
		t.Fatalf("plaintext kilnctl was answered: %s", r)
	}
	// A client that does not trust the cluster's CA refuses the cluster.
	if r := h.ctlEnv(addrs, []string{"KILN_TLS_CA=" + stranger.ca()}, "--timeout", "3s", "cluster", "status"); r.code == 0 {
		t.Fatalf("kilnctl trusting another CA was answered: %s", r)
	}

	// The real agent, named by its certificate.
	a1cert, a1key := p.cert("agent", "a1")
	h.startProc("agent-a1", "kiln-agent", "--coordinators", strings.Join(addrs, ","), "--pass-env", ownerEnv,
		"--labels", "pool=real", "--slots", "1", "--work-dir", filepath.Join(h.root, "work-a1"),
		"--heartbeat", agentHeartbeat, "--tls-ca", p.ca(), "--tls-cert", a1cert, "--tls-key", a1key)

	r := h.ctlEnv(addrs, tlsEnv, "run", "--wait", "--label", "pool=real", "--", "echo over-tls")
	if r.code != 0 || r.stdout != "over-tls\n" {
		t.Fatalf("build over TLS: %s", r)
	}

	// A long job on a1 that fails; the attackers try to take it over or
	// report it passed.
	r = h.ctlEnv(addrs, tlsEnv, "run", "--label", "pool=real", "--", "sleep 4; echo real-end; exit 3")
	if r.code != 0 {
		t.Fatalf("submit: %s", r)
	}
	id := strings.TrimSpace(r.stdout)
	var job jobJSON
	eventually(t, 20*time.Second, func() error {
		var b buildJSON
		if err := h.ctlJSON(addrs, &b, "status", id); err != nil {
			return err
		}
		if len(b.Jobs) != 1 || b.Jobs[0].State != "running" || b.Jobs[0].Agent != "a1" {
			return fmt.Errorf("job not running on a1: %+v", b.Jobs)
		}
		job = b.Jobs[0]
		return nil
	})
	_ = job

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a2cert, a2key := p.cert("agent", "a2")
	opsCert, opsKey := p.cert("client", "ops")
	fakeA1cert, fakeA1key := stranger.cert("agent", "a1")

	// Registering as a1 without a1's certificate.
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":                   insecure.NewCredentials(),
		"TLS without a certificate":   p.creds(t, p, "", ""),
		"a client certificate":        p.creds(t, p, opsCert, opsKey),
		"another CA's a1 certificate": p.creds(t, p, fakeA1cert, fakeA1key),
		"a2's certificate":            p.creds(t, p, a2cert, a2key),
	} {
		for _, addr := range addrs {
			code, err := registerAs(ctx, addr, creds, "a1")
			if code == codes.OK {
				t.Errorf("%s: registered as a1 at %s", name, addr)
			}
			if name == "a2's certificate" && code != codes.PermissionDenied && code != codes.Unavailable {
				t.Errorf("%s at %s: %v, want PermissionDenied (leader) or Unavailable (follower)", name, addr, err)
			}
		}
	}

	// a2, a legitimate agent, reports a1's attempt as passed.
	a2creds := p.creds(t, p, a2cert, a2key)
	stale := false
	for _, addr := range addrs {
		ack, err := reportFinished(ctx, addr, a2creds, job.ID, job.Attempt)
		if err == nil {
			stale = ack.GetStale()
			break
		}
	}
	if !stale {
		t.Errorf("a2's report on a1's attempt was not answered stale")
	}

	// Cluster-internal calls need a coordinator certificate.
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":            insecure.NewCredentials(),
		"no certificate":       p.creds(t, p, "", ""),
		"a client certificate": p.creds(t, p, opsCert, opsKey),
		"an agent certificate": a2creds,
	} {
		conn, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		cl := kilnv1.NewClusterServiceClient(conn)
		_, jerr := cl.Join(ctx, &kilnv1.JoinRequest{NodeId: "evil", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:2"})
		_, rerr := cl.ReadIndex(ctx, &kilnv1.ReadIndexRequest{})
		_, lerr := cl.Leave(ctx, &kilnv1.LeaveRequest{NodeId: "n2"})
		conn.Close()
		for what, err := range map[string]error{"Join": jerr, "ReadIndex": rerr} {
			if err == nil {
				t.Errorf("%s: %s succeeded", name, what)
			}
		}
		if lerr == nil && name != "a client certificate" {
			t.Errorf("%s: Leave succeeded", name)
		}
	}

	// The Raft port: a plaintext transport and an agent certificate get
	// nowhere.
	raftAddr := c.nodes[0].raftAddr
	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var resp raft.RequestVoteResponse
	if err := plain.RequestVote("n1", raft.ServerAddress(raftAddr), &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ID: []byte("evil"), Addr: []byte("127.0.0.1:1")}, Term: 1 << 40,
	}, &resp); err == nil {
		t.Errorf("a plaintext RequestVote to the raft port was answered: %+v", resp)
	}
	plain.Close()
	if err := tlsProbe(raftAddr, p, a2cert, a2key); err == nil {
		t.Errorf("the raft port accepted an agent certificate")
	}
	if err := tlsProbe(raftAddr, p, "", ""); err == nil {
		t.Errorf("the raft port accepted a connection without a certificate")
	}

	// The job ends as a1 ran it: failed with exit 3, attempt 1, on a1.
	b := h.waitFinished(addrs, id, 30*time.Second)
	if b.State != "failed" || len(b.Jobs) != 1 || b.Jobs[0].ExitCode != 3 || b.Jobs[0].Agent != "a1" || b.Jobs[0].Attempt != job.Attempt {
		t.Fatalf("build %s after the forgeries: %+v, want failed with exit 3 on a1 attempt %d", id, b, job.Attempt)
	}
	logs, err := h.logs(addrs, id)
	if err != nil || logs != "real-end\n" {
		t.Fatalf("log %q (%v), want real-end", logs, err)
	}
	// The cluster still has its three members and a leader.
	for _, n := range c.nodes {
		if !n.running() {
			t.Fatalf("%s exited: %s", n.id, n.stderrTail(2000))
		}
	}
}

// registerAs opens an agent session at addr with creds, registering as
// name, and returns how the coordinator answered.
func registerAs(ctx context.Context, addr string, creds credentials.TransportCredentials, name string) (codes.Code, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return codes.Internal, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := kilnv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return status.Code(err), err
	}
	if err := stream.Send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Register{Register: &kilnv1.Register{Name: name, Slots: 1}}}); err != nil {
		_, err = stream.Recv()
		return status.Code(err), err
	}
	m, err := stream.Recv()
	if err != nil {
		return status.Code(err), err
	}
	if m.GetRegistered() == nil {
		return codes.Unknown, fmt.Errorf("unexpected first answer %v", m)
	}
	return codes.OK, nil
}

// reportFinished registers with creds under the certificate's own name and
// reports attempt of job as passed, returning the Ack for it.
func reportFinished(ctx context.Context, addr string, creds credentials.TransportCredentials, job string, attempt uint32) (*kilnv1.Ack, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := kilnv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Register{Register: &kilnv1.Register{Slots: 1, Labels: map[string]string{"pool": "none"}}}}); err != nil {
		return nil, err
	}
	if m, err := stream.Recv(); err != nil || m.GetRegistered() == nil {
		return nil, fmt.Errorf("register: %v %v", m, err)
	}
	if err := stream.Send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{
		JobId: job, Attempt: attempt, Result: kilnv1.JobResult_JOB_RESULT_PASSED, TimeUnixMs: time.Now().UnixMilli(),
	}}}); err != nil {
		return nil, err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if ack := m.GetAck(); ack != nil && ack.GetJobId() == job {
			return ack, nil
		}
	}
}

// tlsProbe dials addr with TLS trusting p and presenting the pair (if
// any), writes and reads a byte: nil means the server kept the connection.
func tlsProbe(addr string, p *pki, certFile, keyFile string) error {
	pool, err := tlsutil.LoadPool(p.ca())
	if err != nil {
		return err
	}
	var holder *tlsutil.Holder
	if certFile != "" {
		pair, _, err := tlsutil.LoadKeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		holder = tlsutil.NewHolder(pair)
	}
	cfg, err := tlsutil.PeerClientConfig(pool, holder, addr)
	if err != nil {
		return err
	}
	raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(3 * time.Second))
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		return err
	}
	// A raft RPC type byte; a peer that accepted us waits for the rest,
	// one that refused our certificate has closed the connection.
	if _, err := conn.Write([]byte{0}); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return nil
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestCoordinatorFetchesOnlyAllowedGitURLs: with the default --git-allow a
// client cannot make the coordinator read its own disk, a cloud metadata
// address or a loopback service, and nothing is queued.
func TestCoordinatorFetchesOnlyAllowedGitURLs(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(1)
	addrs := c.addrs()
	for _, u := range []string{
		"file:///etc",
		"https://169.254.169.254/latest/meta-data/",
		"http://169.254.169.254/latest/meta-data/",
		"https://127.0.0.1:" + fmt.Sprint(freePorts(t, 1)[0]) + "/x.git",
		"https://user:s3cr3t@localhost/x.git",
	} {
		r := h.ctl(addrs, "run", "--git", u, "--", "true")
		if r.code != 2 || !strings.Contains(r.stderr, "not allowed by --git-allow") {
			t.Errorf("run --git %s: want exit 2 'not allowed by --git-allow': %s", u, r)
		}
		if strings.Contains(r.stderr, "s3cr3t") {
			t.Errorf("run --git %s: the error shows the password: %s", u, r)
		}
	}
	var builds []buildJSON
	if err := h.ctlJSON(addrs, &builds, "builds"); err != nil {
		t.Fatal(err)
	}
	if len(builds) != 0 {
		t.Fatalf("refused sources queued builds: %+v", builds)
	}
}
