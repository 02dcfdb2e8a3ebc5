package dashboard_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// browser starts headless Chromium (Debian's chromium) for the test, or
// skips the test when it is not installed. The browser is closed at
// cleanup.
func browser(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Skip("chromium is not installed (apt-get install chromium): the dashboard's browser tests need a real headless Chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		// Running as root (CI containers) needs --no-sandbox.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancelTimeout := context.WithTimeout(context.Background(), timeout)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		_ = chromedp.Cancel(bctx)
		cancelBrowser()
		cancelAlloc()
		cancelTimeout()
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium %s: %v", path, err)
	}
	return bctx
}

func submit(t *testing.T, c *clustertest.Cluster, req *kilnv1.SubmitBuildRequest) *kilnv1.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b *kilnv1.Build
	err := clustertest.Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, req)
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return b
}

// poll waits in the browser until the JavaScript expression is true,
// checking it on every DOM mutation (no timer).
func poll(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(15*time.Second), chromedp.WithPollingMutation())
}

// TestDashboardInChromium drives the dashboard of a real in-process
// cluster (Raft, gRPC, an agent running shell steps) in headless
// Chromium: the history lists the builds, a running build's page shows a
// log line that the step prints after the page has loaded (pushed over
// SSE, without a reload), and the approve button unblocks a gated build.
func TestDashboardInChromium(t *testing.T) {
	ctx := browser(t, 45*time.Second)
	c := clustertest.Start(t, 1, clustertest.Options{HTTP: true})
	c.StartAgent("a1", nil, 2)
	base := "http://" + c.Nodes[0].C.HTTPAddr()

	gate := filepath.Join(t.TempDir(), "go")
	slow := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name() + "-slow", Name: "slow-printer",
		Command: fmt.Sprintf("echo first-line; while [ ! -e %s ]; do sleep 0.05; done; echo second-line", gate)})
	gated := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name() + "-gated", SpecYaml: `name: gated
stages:
  - name: build
    steps:
      - key: compile
        command: echo compiled
  - name: release
    steps:
      - key: gate
        approval:
          prompt: ship it?
  - name: ship
    steps:
      - key: deploy
        command: echo shipped
`})

	// History: both builds, newest first.
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#builds tr[data-id="`+gated.GetId()+`"]`)),
	)
	if err != nil {
		t.Fatalf("history page: %v", err)
	}
	order, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#builds tr.build')).map(r => r.dataset.id)`))
	if err != nil {
		t.Fatalf("history page: %v", err)
	}
	if len(order) != 2 || order[0] != gated.GetId() || order[1] != slow.GetId() {
		t.Fatalf("history lists %v, want [%s %s] (newest first)", order, gated.GetId(), slow.GetId())
	}

	// The running build's page: the first line is there, then the second
	// arrives while the page stays loaded (the marker survives).
	logSel := `document.getElementById('log-` + slow.GetJobs()[0].GetKey() + `')`
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/builds/"+slow.GetId()),
		poll(logSel+` && `+logSel+`.textContent.includes('first-line')`),
	)
	if err == nil {
		_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`window.kilnMarker = true`))
	}
	if err != nil {
		t.Fatalf("build page, first line: %v", err)
	}
	if strings.Contains(mustText(t, ctx, logSel), "second-line") {
		t.Fatal("second line shown before the step printed it")
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx, poll(logSel+`.textContent.includes('second-line')`))
	if err != nil {
		t.Fatalf("build page, live line: %v", err)
	}
	marker, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.kilnMarker === true`))
	if err == nil {
		err = chromedp.Do(ctx, poll(`document.getElementById('build-state').textContent === 'passed'`))
	}
	if err != nil {
		t.Fatalf("build page, live line: %v", err)
	}
	if !marker {
		t.Fatal("the page was reloaded to show the new line; it must arrive over the live stream")
	}
	if got := mustText(t, ctx, logSel); got != "first-line\nsecond-line\n" {
		t.Fatalf("log pane %q, want each line once", got)
	}

	// The gated build: approve in the page; the build goes on and passes.
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/builds/"+gated.GetId()),
		chromedp.WaitVisible(chromedp.CSS(`#approve-gate`)),
		chromedp.SendKeys(chromedp.CSS(`#step-gate input[name=comment]`), "looks good"),
	)
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	// The click posts the form; RunResponse waits for the page it
	// redirects to.
	resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`#approve-gate`)))
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	if resp.Status != 200 || !strings.HasSuffix(resp.URL, "/builds/"+gated.GetId()) {
		t.Fatalf("approve answered %d %s, want the build page", resp.Status, resp.URL)
	}
	err = chromedp.Do(ctx,
		poll(`document.getElementById('build-state') && document.getElementById('build-state').textContent === 'passed'`),
		poll(`document.getElementById('log-deploy').textContent === 'shipped\n'`),
	)
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	b, ok := c.Nodes[0].C.Store().Build(gated.GetId())
	if !ok || b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("gated build after approval: %v", b.GetState())
	}
	for _, j := range b.GetJobs() {
		if j.GetKey() == "gate" {
			if a := j.GetApproval(); !a.GetApproved() || a.GetComment() != "looks good" || !strings.HasPrefix(a.GetBy(), "web@") {
				t.Fatalf("approval %v, want approved by web@... with the comment", a)
			}
		}
	}

	// Filters and the other pages render.
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/?state=passed"),
		chromedp.WaitVisible(chromedp.CSS(`#builds`)),
	)
	if err != nil {
		t.Fatalf("filtered history: %v", err)
	}
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#builds tr.build[data-state=passed]').length`))
	if err == nil {
		err = chromedp.Do(ctx,
			chromedp.Navigate(base+"/cluster"),
			poll(`document.getElementById('leader').textContent === 'n1'`),
			chromedp.Navigate(base+"/agents"),
			poll(`document.getElementById('agents').textContent.includes('a1')`),
			chromedp.Navigate(base+"/queue"),
			chromedp.WaitVisible(chromedp.CSS(`#queue`)),
		)
	}
	if err != nil {
		t.Fatalf("other pages: %v", err)
	}
	if rows != 2 {
		t.Fatalf("state=passed lists %d builds, want 2", rows)
	}
}

func mustText(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr+`.textContent`))
	if err != nil {
		t.Fatalf("read %s: %v", expr, err)
	}
	return s
}
