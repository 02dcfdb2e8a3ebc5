package dashboard_test

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// aclCluster starts a one-node cluster with --acl and HTTP and returns it
// with the secrets of an admin, a viewer ("vic") and an approver ("alice")
// token.
func aclCluster(t *testing.T) (*clustertest.Cluster, map[string]string) {
	t.Helper()
	c := clustertest.Start(t, 1, clustertest.Options{ACL: true, HTTP: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	access := func(cl interface {
		Do(context.Context, func(context.Context, grpc.ClientConnInterface) error) error
	}, fn func(context.Context, kilnv1.AccessServiceClient) error) error {
		return cl.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
			return fn(ctx, kilnv1.NewAccessServiceClient(cc))
		})
	}
	toks := map[string]string{}
	err := access(c.Client(), func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
		resp, err := ac.BootstrapToken(ctx, &kilnv1.BootstrapTokenRequest{})
		toks["admin"] = resp.GetSecret()
		return err
	})
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	adm := c.ClientWithToken(toks["admin"])
	for name, role := range map[string]string{"vic": "viewer", "alice": "approver"} {
		err := access(adm, func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
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

// TestDashboardWithACLs: with --acl the pages ask for a token; a viewer
// token reads but its approval is refused (403, nothing changes); a form
// without the CSRF token is refused; an approver's click unblocks the
// build, and the audit log names the approver's token.
func TestDashboardWithACLs(t *testing.T) {
	ctx := browser(t, 30*time.Second)
	c, toks := aclCluster(t)
	base := "http://" + c.Nodes[0].C.HTTPAddr()
	gated := submitWith(t, c.ClientWithToken(toks["admin"]), &kilnv1.SubmitBuildRequest{RequestId: t.Name(), SpecYaml: `name: gated
stages:
  - steps:
      - key: gate
        approval:
          prompt: ship it?
`})
	build := base + "/builds/" + gated.GetId()

	login := func(token string) {
		t.Helper()
		err := chromedp.Do(ctx,
			chromedp.Navigate(build),
			chromedp.WaitVisible(chromedp.CSS(`#token`)),
			chromedp.SendKeys(chromedp.CSS(`#token`), token),
		)
		if err != nil {
			t.Fatalf("login page: %v", err)
		}
		resp, err := chromedp.RunResponse(ctx, chromedp.Submit(chromedp.CSS(`#token`)))
		if err != nil {
			t.Fatalf("log in: %v", err)
		}
		// Back where the login started.
		if resp.Status != http.StatusOK || resp.URL != build {
			t.Fatalf("login answered %d %s, want %s", resp.Status, resp.URL, build)
		}
	}

	// A wrong token is refused with the server's reason.
	err := chromedp.Do(ctx,
		chromedp.Navigate(build),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), "kiln_not-a-real-token"),
	)
	if err != nil {
		t.Fatalf("login page: %v", err)
	}
	resp, err := chromedp.RunResponse(ctx, chromedp.Submit(chromedp.CSS(`#token`)))
	if err != nil || resp.Status != http.StatusUnauthorized {
		t.Fatalf("bad token: %v %v", resp, err)
	}

	// The viewer sees the build and its approve button, but the decision
	// is refused by the same rule as the gRPC call.
	login(toks["vic"])
	resp, err = chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`#approve-gate`)))
	if err != nil {
		t.Fatalf("viewer approve: %v", err)
	}
	msg, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#error`)))
	if resp.Status != http.StatusForbidden || !strings.Contains(msg, "approver") {
		t.Fatalf("viewer approve answered %d %q, want 403 naming the role needed", resp.Status, msg)
	}
	if b, _ := c.Nodes[0].C.Store().Build(gated.GetId()); b.GetState() != kilnv1.BuildState_BUILD_STATE_BLOCKED {
		t.Fatalf("build %s after a refused approval, want blocked", b.GetState())
	}

	// A cross-site form (no CSRF token) is refused before any call.
	jar, _ := cookiejar.New(nil)
	u, _ := url.Parse(base)
	jar.SetCookies(u, []*http.Cookie{{Name: "kiln_token", Value: toks["alice"]}})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post, err := hc.PostForm(build+"/approval", url.Values{"step": {"gate"}, "decision": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusForbidden {
		t.Fatalf("approval without CSRF token: %d, want 403", post.StatusCode)
	}

	// The approver logs in (after logging out) and approves.
	err = chromedp.Do(ctx, chromedp.Navigate(build), chromedp.WaitVisible(chromedp.CSS(`form.logout button`)))
	if err != nil {
		t.Fatalf("build page: %v", err)
	}
	if _, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`form.logout button`))); err != nil {
		t.Fatalf("log out: %v", err)
	}
	login(toks["alice"])
	if _, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`#approve-gate`))); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if err := chromedp.Do(ctx, poll(`document.getElementById('build-state').textContent === 'passed'`)); err != nil {
		t.Fatalf("build page after approval: %v", err)
	}
	b, _ := c.Nodes[0].C.Store().Build(gated.GetId())
	if a := b.GetJobs()[0].GetApproval(); !a.GetApproved() || a.GetBy() != "alice" {
		t.Fatalf("approval %v, want by alice (the token's name)", a)
	}
	var recs []*kilnv1.AuditRecord
	actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.ClientWithToken(toks["admin"]).Do(actx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := kilnv1.NewAccessServiceClient(cc).ListAudit(ctx, &kilnv1.ListAuditRequest{})
		recs = resp.GetRecords()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var who []string
	for _, r := range recs {
		if strings.HasSuffix(r.GetMethod(), "DecideApproval") {
			who = append(who, r.GetWho()+" "+r.GetCode())
		}
	}
	// (The viewer's call was refused by its role before any handler ran:
	// the audit log records calls that reached the state machine.)
	if strings.Join(who, ",") != "alice OK" {
		t.Fatalf("audited approvals %q, want alice's approval", who)
	}
}

func submitWith(t *testing.T, cl interface {
	Do(context.Context, func(context.Context, grpc.ClientConnInterface) error) error
}, req *kilnv1.SubmitBuildRequest) *kilnv1.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b *kilnv1.Build
	err := cl.Do(ctx, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		resp, err := kilnv1.NewControlServiceClient(cc).SubmitBuild(ctx, req)
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return b
}
