package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestSecuredClusterTLSAndACL is issue 9's whole model on real processes:
// three coordinators with TLS (Raft over mTLS, enrollment CA key) and ACLs
// (tokens, sealed secrets, audit). Plaintext and token-less clients are
// refused; the first admin token is bootstrapped over TLS; an agent that
// enrolls with a one-time join token runs, with its certificate as its only
// credential, a developer's build whose step uses a secret; the secret is
// masked in the log and appears in clear in no API answer and no file of
// the test (data dirs, work dir, process logs); the audit names the
// tokens; a reused join token and forged agents are refused.
func TestSecuredClusterTLSAndACL(t *testing.T) {
	h := newHarness(t)
	p := h.newPKI("pki")
	stranger := h.newPKI("stranger")
	key := filepath.Join(h.root, "cluster.key")
	kb := make([]byte, 32)
	_, _ = rand.Read(kb)
	if err := os.WriteFile(key, []byte(hex.EncodeToString(kb)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 6)
	var initial, addrs []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("n%d=127.0.0.1:%d", i+1, ports[2*i+1]))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", ports[2*i]))
	}
	var coords []*proc
	for i := range 3 {
		id := fmt.Sprintf("n%d", i+1)
		cert, ckey := p.cert("coordinator", id, "127.0.0.1")
		coords = append(coords, h.startProc("coordinator-"+id, "kiln-coordinator", "--node-id", id,
			"--data-dir", filepath.Join(h.root, "data", id), "--grpc-addr", addrs[i],
			"--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]), "--initial-cluster", strings.Join(initial, ","),
			"--lease-ttl", leaseTTL, "--heartbeat-interval", heartbeatInterval,
			"--tls-ca", p.ca(), "--tls-cert", cert, "--tls-key", ckey, "--tls-ca-key", filepath.Join(p.dir, "ca-key.pem"),
			"--acl", "--secrets-key-file", key,
			// Short enough that the agent renews during the test.
			"--agent-cert-validity", "9s"))
	}
	// Every kilnctl run trusts the cluster's CA from here on.
	t.Setenv("KILN_TLS_CA", p.ca())

	// The first admin token, over TLS, once a leader is up.
	var admin string
	eventually(t, 30*time.Second, func() error {
		r := h.ctl(addrs, "--timeout", "5s", "token", "bootstrap")
		if r.code != 0 {
			return fmt.Errorf("bootstrap: %s", r)
		}
		admin = strings.TrimSpace(r.stdout)
		return nil
	})
	as := func(tok string) []string { return []string{"KILN_TOKEN=" + tok} }

	// A plaintext client is not answered, even with the admin token.
	if r := h.ctlEnv(addrs, append(as(admin), "KILN_TLS_CA="), "--timeout", "3s", "builds"); r.code == 0 {
		t.Fatalf("plaintext kilnctl with the admin token was answered: %s", r)
	}
	// TLS without a token: refused by every coordinator, Unauthenticated.
	for _, a := range addrs {
		if r := h.ctl([]string{a}, "builds"); r.code != 1 || !strings.Contains(r.stderr, "requires a token") {
			t.Fatalf("TLS client without a token on %s: %s", a, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext": insecure.NewCredentials(), "TLS": p.creds(t, p, "", ""),
	} {
		conn, err := grpc.NewClient(addrs[0], grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		_, err = kilnv1.NewControlServiceClient(conn).ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
		conn.Close()
		want := codes.Unauthenticated
		if name == "plaintext" {
			want = codes.Unavailable
		}
		if status.Code(err) != want {
			t.Errorf("%s ListBuilds without a token: %v, want %v", name, err, want)
		}
	}

	create := func(args ...string) string {
		t.Helper()
		r := h.ctlEnv(addrs, as(admin), append([]string{"token", "create"}, args...)...)
		if r.code != 0 {
			t.Fatalf("token create %v: %s", args, r)
		}
		return strings.TrimSpace(r.stdout)
	}
	dev, ops, join := create("--name", "dev", "--role", "developer"), create("--name", "ops", "--role", "operator"),
		create("--name", "pool", "--agent")
	agentTok := create("--name", "hosts", "--role", "agent")
	rel := create("--name", "rel", "--role", "approver")

	// The secret, set by the operator on standard input.
	raw := make([]byte, 12)
	_, _ = rand.Read(raw)
	secret := "kiln-sec/" + hex.EncodeToString(raw) + "+="
	if r := h.ctlStdin(addrs, as(ops), secret+"\n", "secret", "set", "DEPLOY_KEY"); r.code != 0 {
		t.Fatalf("secret set: %s", r)
	}

	// The agent enrolls with the join token; no API token.
	workDir := filepath.Join(h.root, "work", "a1")
	h.startProc("agent-a1", "kiln-agent", "--coordinators", strings.Join(addrs, ","), "--name", "a1",
		"--pass-env", ownerEnv, "--work-dir", workDir, "--heartbeat", agentHeartbeat,
		"--tls-ca", p.ca(), "--join-token", join)

	spec := filepath.Join(h.root, "kiln.yaml")
	if err := os.WriteFile(spec, []byte(`name: secured
steps:
  - key: deploy
    secrets: [DEPLOY_KEY]
    commands:
      - echo "plain $DEPLOY_KEY"
      - printf '%s' "$DEPLOY_KEY" | base64 -w0; echo
      - printf '%s' "$DEPLOY_KEY" | wc -c
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := h.ctlEnv(addrs, as(dev), "run", "-f", spec, "--wait")
	if r.code != 0 {
		t.Fatalf("developer run: %s", r)
	}
	id := submittedID(t, r)
	wantLog := fmt.Sprintf("plain ***\n***\n%d\n", len(secret))
	if r.stdout != wantLog {
		t.Fatalf("build output %q, want %q", r.stdout, wantLog)
	}
	var b buildJSON
	if r := h.ctlEnv(addrs, as(dev), "status", id, "-o", "json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &b) != nil {
		t.Fatalf("status: %s", r)
	}
	if b.State != "passed" || len(b.Jobs) != 1 || b.Jobs[0].Agent != "a1" {
		t.Fatalf("build %s: %+v, want passed on a1", id, b)
	}

	// The agent renews its certificate (RenewAgent: agent certificate, no
	// token) two thirds into its validity.
	identityFile := filepath.Join(workDir, "agent-identity.pem")
	enrolled, err := os.ReadFile(identityFile)
	if err != nil {
		t.Fatalf("the enrolled agent has no identity file: %v", err)
	}
	eventually(t, 20*time.Second, func() error {
		now, err := os.ReadFile(identityFile)
		if err != nil || bytes.Equal(now, enrolled) {
			return fmt.Errorf("identity file not renewed yet (%v)", err)
		}
		return nil
	})

	// Log replication with both on: every coordinator serves the log
	// from its own store (peers copy it with certificate + peer credential).
	for _, a := range addrs {
		eventually(t, 15*time.Second, func() error {
			r := h.ctlEnv([]string{a}, as(dev), "--timeout", "5s", "logs", id)
			if r.code != 0 || r.stdout != wantLog {
				return fmt.Errorf("log on %s: %s", a, r)
			}
			return nil
		})
	}
	// Blob replication and agent downloads: an uploaded source reaches the
	// job.
	src := filepath.Join(h.root, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte("uploaded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := h.ctlEnv(addrs, as(dev), "run", "--upload", src, "--wait", "--", "cat hello.txt"); r.code != 0 || !strings.HasSuffix(r.stdout, "\nuploaded\n") {
		t.Fatalf("uploaded-source build: %s", r)
	}

	// An approval is recorded under the approver's token name, whatever
	// USER the client has; a developer may not approve.
	gated := filepath.Join(h.root, "gated.yaml")
	if err := os.WriteFile(gated, []byte(`name: gated
stages:
  - name: gate
    steps:
      - key: gate
        approval:
          approvers: [rel]
  - name: deploy
    steps:
      - key: deploy
        command: echo deployed
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r = h.ctlEnv(addrs, as(dev), "run", "-f", gated)
	gid := strings.TrimSpace(r.stdout)
	if r.code != 0 || gid == "" {
		t.Fatalf("submit gated: %s", r)
	}
	if r := h.ctlEnv(addrs, append(as(dev), "USER=rel"), "approve", gid, "gate"); r.code == 0 || !strings.Contains(r.stderr, "needs role approver") {
		t.Fatalf("developer approving: %s", r)
	}
	eventually(t, 15*time.Second, func() error {
		r := h.ctlEnv(addrs, append(as(rel), "USER=mallory"), "approve", gid, "gate", "--comment", "ship")
		if r.code != 0 {
			return fmt.Errorf("approve: %s", r)
		}
		return nil
	})
	eventually(t, 20*time.Second, func() error {
		var g buildJSON
		r := h.ctlEnv(addrs, as(dev), "status", gid, "-o", "json")
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &g) != nil {
			return fmt.Errorf("status: %s", r)
		}
		if g.State != "passed" {
			return fmt.Errorf("gated build is %s: %+v", g.State, g.Jobs)
		}
		for _, j := range g.Jobs {
			if j.Key == "gate" && (j.Approval == nil || j.Approval.By != "rel" || !j.Approval.Approved) {
				t.Fatalf("gate decision %+v, want approved by rel", j.Approval)
			}
		}
		return nil
	})

	// The join token was used up: a second agent cannot enroll with it.
	second := h.startProc("agent-a2", "kiln-agent", "--coordinators", strings.Join(addrs, ","), "--name", "a2",
		"--work-dir", filepath.Join(h.root, "work", "a2"), "--heartbeat", agentHeartbeat,
		"--tls-ca", p.ca(), "--join-token", join)
	if code, ok := second.wait(20 * time.Second); !ok || code == 0 {
		t.Errorf("a second enrollment with a used join token: exited=%v code %d, want a non-zero exit", ok, code)
	}

	// Forged agents: no certificate (even with an agent token), another
	// CA's certificate for a1, this CA's certificate for a2.
	a2cert, a2key := p.cert("agent", "a2")
	fakeCert, fakeKey := stranger.cert("agent", "a1")
	withToken := metadata.AppendToOutgoingContext(ctx, authn.MetadataKey, "Bearer "+agentTok)
	for name, tc := range map[string]struct {
		creds credentials.TransportCredentials
		want  []codes.Code
	}{
		"no certificate, an agent token": {p.creds(t, p, "", ""), []codes.Code{codes.Unauthenticated}},
		"another CA's a1 certificate":    {p.creds(t, p, fakeCert, fakeKey), []codes.Code{codes.Unavailable}},
		"a2's certificate naming a1":     {p.creds(t, p, a2cert, a2key), []codes.Code{codes.PermissionDenied, codes.Unavailable}},
	} {
		for _, a := range addrs {
			code, err := registerAs(withToken, a, tc.creds, "a1")
			if code == codes.OK || !contains(tc.want, code) {
				t.Errorf("%s at %s: %v (%v), want one of %v", name, a, code, err, tc.want)
			}
		}
	}

	// The audit names the tokens.
	r = h.ctlEnv(addrs, as(admin), "audit", "-o", "json")
	var recs []struct{ Who, Method, What, Code string }
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &recs) != nil {
		t.Fatalf("audit: %s", r)
	}
	var submitted, setSecret, approved, enrollAudited bool
	for _, rec := range recs {
		enrollAudited = enrollAudited || (rec.Method == "EnrollAgent" && rec.What == "agent=a1" && rec.Code == "OK")
		approved = approved || (rec.Who == "rel" && rec.Method == "DecideApproval" && strings.Contains(rec.What, "build="+gid) && rec.Code == "OK")
		submitted = submitted || (rec.Who == "dev" && rec.Method == "SubmitBuild" && strings.Contains(rec.What, "build="+id) && rec.Code == "OK")
		setSecret = setSecret || (rec.Who == "ops" && rec.Method == "SetSecret" && strings.Contains(rec.What, "secret=DEPLOY_KEY"))
	}
	if !enrollAudited {
		t.Errorf("audit lacks a1's enrollment: %s", r.stdout)
	}
	if !submitted || !setSecret || !approved {
		t.Errorf("audit lacks dev's SubmitBuild of %s (%v), ops's SetSecret (%v) or rel's approval of %s (%v): %s",
			id, submitted, setSecret, gid, approved, r.stdout)
	}

	// API answers as an admin reads them, and every file of the test.
	forms := map[string]string{"plain": secret, "base64": base64.StdEncoding.EncodeToString([]byte(secret))}
	var answers bytes.Buffer
	for _, args := range [][]string{{"status", id, "-o", "json"}, {"logs", id}, {"secret", "list"}, {"audit", "-o", "json"}, {"agents", "-o", "json"}} {
		r := h.ctlEnv(addrs, as(admin), args...)
		if r.code != 0 {
			t.Fatalf("%v: %s", args, r)
		}
		answers.WriteString(r.stdout)
	}
	for name, f := range forms {
		if strings.Contains(answers.String(), f) {
			t.Errorf("the %s secret is in an API answer", name)
		}
	}
	scanned := 0
	err = filepath.WalkDir(h.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil // a file being replaced (raft, logs) is read on the next run
		}
		scanned++
		for name, f := range forms {
			if bytes.Contains(data, []byte(f)) {
				t.Errorf("the %s secret is in %s", name, path)
			}
		}
		return nil
	})
	if err != nil || scanned < 20 {
		t.Fatalf("scanned %d files: %v", scanned, err)
	}
	for _, c := range coords {
		if !c.running() {
			t.Fatalf("%s exited: %s", c.name, c.stderrTail(2000))
		}
	}
}

func contains(codes []codes.Code, c codes.Code) bool {
	for _, x := range codes {
		if x == c {
			return true
		}
	}
	return false
}

// ctlStdin runs kilnctl like ctlEnv with stdin as its standard input.
func (h *harness) ctlStdin(addrs, env []string, stdin string, args ...string) ctlResult {
	ctx, cancel := context.WithTimeout(h.ctx, ctlTimeout)
	defer cancel()
	full := append([]string{"--coordinators", strings.Join(addrs, ",")}, args...)
	cmd := exec.CommandContext(ctx, binPath("kilnctl"), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &stdout, &stderr
	cmd.Env = append(h.env(), env...)
	err := cmd.Run()
	r := ctlResult{args: full, stdout: stdout.String(), stderr: stderr.String(), code: -1, err: err}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
		r.err = nil
	}
	return r
}
