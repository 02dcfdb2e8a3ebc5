package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// A secret a step uses reaches the job's environment and appears in clear
// nowhere else: not in the log (plain, base64, URL-encoded, split across
// log chunks), not in any API answer, not in any file under any
// coordinator's data dir (Raft log, snapshots) or the agent's work dir.
func TestSecretAppearsNowhereInClear(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, toks := bootstrapACL(t, ctx)
	c.AgentToken = toks["agent"]
	ag := c.StartAgent("a1", nil, 2)

	raw := make([]byte, 12)
	_, _ = rand.Read(raw)
	value := "kiln-test/" + hex.EncodeToString(raw) + "+=?"
	forms := map[string]string{
		"plain":      value,
		"base64":     base64.StdEncoding.EncodeToString([]byte(value)),
		"base64url":  base64.RawURLEncoding.EncodeToString([]byte(value)),
		"urlencoded": url.QueryEscape(value),
	}
	ops := c.ClientWithToken(toks["ops"])
	err := accessCall(ctx, ops, func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		_, err := ac.SetSecret(ctx, &kilnv1.SetSecretRequest{Name: "DEPLOY_KEY", Value: []byte(value)})
		return err
	})
	if err != nil {
		t.Fatalf("set secret: %v", err)
	}
	spec := `name: uses-secret
steps:
  - key: deploy
    secrets: [DEPLOY_KEY]
    commands:
      - echo "plain $DEPLOY_KEY"
      - printf '%s' "$DEPLOY_KEY" | base64 -w0; echo
      - printf '%s' "$DEPLOY_KEY" | base64 -w0 | tr '+/' '-_' | tr -d '='; echo
      - python3 -c 'import os,urllib.parse;print(urllib.parse.quote_plus(os.environ["DEPLOY_KEY"]))' 2>/dev/null || true
      - printf 'split %s' "${DEPLOY_KEY:0:7}"; sleep 0.2; printf '%s end\n' "${DEPLOY_KEY:7}"
      - printf '%s' "$DEPLOY_KEY" | sha256sum
`
	dev := c.ClientWithToken(toks["dev"])
	var b *kilnv1.Build
	err = Control(ctx, dev, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec})
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	b = waitBuild(t, c, b.GetId(), 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s (%s)", b.GetState(), b.GetReason())
	}
	job := b.GetJobs()[0]
	log := jobLog(c.Leader(), job)
	sum := sha256.Sum256([]byte(value))
	if !strings.Contains(log, hex.EncodeToString(sum[:])) {
		t.Fatalf("the job did not get the secret (no matching sha256):\n%s", log)
	}
	for _, want := range []string{"plain ***\n", "\n***\n", "split *** end\n"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if n := job.GetLogSeq(); n < 2 {
		t.Errorf("the log came in %d chunk(s); the split case needs the value across chunks", n)
	}

	// API answers, as every reader sees them.
	var answers []string
	admin := c.ClientWithToken(toks["admin"])
	_ = Control(ctx, admin, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: b.GetId()})
		answers = append(answers, protojson.Format(resp))
		if err != nil {
			return err
		}
		st, err := cc.StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: b.GetId()})
		if err != nil {
			return err
		}
		for {
			m, err := st.Recv()
			if err != nil {
				break
			}
			answers = append(answers, protojson.Format(m))
		}
		return nil
	})
	_ = accessCall(ctx, admin, func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		s, _ := ac.ListSecrets(ctx, &kilnv1.ListSecretsRequest{})
		a, _ := ac.ListAudit(ctx, &kilnv1.ListAuditRequest{})
		answers = append(answers, protojson.Format(s), protojson.Format(a))
		if len(s.GetSecrets()) != 1 || len(a.GetRecords()) == 0 {
			t.Errorf("secrets %v, audit %d records", s.GetSecrets(), len(a.GetRecords()))
		}
		return nil
	})
	all := log + strings.Join(answers, "\n")
	for name, f := range forms {
		if strings.Contains(all, f) {
			t.Errorf("%s form of the secret in the log or an API answer", name)
		}
	}

	// Files: snapshots too, not only the Raft log.
	for _, n := range c.Nodes {
		if err := n.C.Snapshot(); err != nil {
			t.Fatalf("snapshot %s: %v", n.ID, err)
		}
	}
	dirs := []string{ag.WorkDir}
	for _, n := range c.Nodes {
		dirs = append(dirs, n.DataDir)
	}
	files := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			for name, f := range forms {
				if bytes.Contains(data, []byte(f)) {
					t.Errorf("%s form of the secret in clear in %s", name, path)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files < 6 {
		t.Fatalf("only %d files looked at", files)
	}
	t.Logf("looked at %d files", files)

	// A deleted secret: new builds naming it are refused at submit.
	err = accessCall(ctx, ops, func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		_, err := ac.DeleteSecret(ctx, &kilnv1.DeleteSecretRequest{Name: "DEPLOY_KEY"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = Control(ctx, dev, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), SpecYaml: spec})
		return err
	})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "secret DEPLOY_KEY is not set") {
		t.Fatalf("submit without the secret: %v", err)
	}
}
