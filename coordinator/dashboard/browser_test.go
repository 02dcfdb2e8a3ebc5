package dashboard_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	ctx := browser(t, 30*time.Second)
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

	ranOnce := filepath.Join(t.TempDir(), "ran-once")
	report := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name() + "-report", SpecYaml: fmt.Sprintf(`name: report
stages:
  - steps:
      - key: test
        junit: [report.xml]
        artifacts: [out.txt]
        retry: {on_failure: 1}
        commands:
          - |
            ok='<testcase classname="pkg.T" name="ok" time="0.5"/>'
            if [ -e %[1]q ]; then
              echo "<testsuite name=\"s\">$ok<testcase classname=\"pkg.T\" name=\"shaky\"/><testcase classname=\"pkg.T\" name=\"broken\"><failure message=\"boom\">trace</failure></testcase></testsuite>" > report.xml
              echo artifact-bytes > out.txt
            else
              touch %[1]q
              echo "<testsuite name=\"s\">$ok<testcase classname=\"pkg.T\" name=\"shaky\"><failure message=\"boom\">trace</failure></testcase></testsuite>" > report.xml
              exit 1
            fi
`, ranOnce)})
	waitFinished(t, c, report.GetId())

	// History: the builds, newest first.
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
	if len(order) != 3 || order[0] != report.GetId() || order[1] != gated.GetId() || order[2] != slow.GetId() {
		t.Fatalf("history lists %v, want [%s %s %s] (newest first)", order, report.GetId(), gated.GetId(), slow.GetId())
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
	cols, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#stages .stage')).map(s => s.querySelector('h2').textContent + ':' + Array.from(s.querySelectorAll('.step')).map(e => e.dataset.key).join('+'))`))
	if err != nil || strings.Join(cols, " ") != "build:compile release:gate ship:deploy" {
		t.Fatalf("stage view columns %q (%v), want build:compile release:gate ship:deploy", cols, err)
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

	// Tests tab: the failed case first, the flaky one marked. Artifacts
	// tab: the link downloads the file's bytes.
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/builds/"+report.GetId()+"?tab=tests"),
		chromedp.WaitVisible(chromedp.CSS(`#tests`)),
	)
	if err != nil {
		t.Fatalf("tests tab: %v", err)
	}
	tests, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#tests tr.test')).map(r => r.cells[3].textContent + ' ' + r.cells[0].textContent.trim())`))
	if err != nil {
		t.Fatalf("tests tab: %v", err)
	}
	if len(tests) != 3 || tests[0] != "broken failed" || tests[1] != "shaky passed flaky" || tests[2] != "ok passed" {
		t.Fatalf("tests tab rows %q, want broken (failed) first, then shaky marked flaky", tests)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/builds/"+report.GetId()+"?tab=artifacts"),
		chromedp.WaitVisible(chromedp.CSS(`#artifacts a[download]`)),
	)
	if err != nil {
		t.Fatalf("artifacts tab: %v", err)
	}
	href, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#artifacts a[download]').href`))
	if err != nil {
		t.Fatalf("artifacts tab: %v", err)
	}
	if got := httpGet(t, href); got != "artifact-bytes\n" {
		t.Fatalf("artifact download %s: %q", href, got)
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
	if rows != 3 {
		t.Fatalf("state=passed lists %d builds, want 3", rows)
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

// waitFinished waits for a build to finish, by WatchBuild (which ends
// when the build does).
func waitFinished(t *testing.T, c *clustertest.Cluster, id string) *kilnv1.Build {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last *kilnv1.Build
	err := clustertest.Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		stream, err := cc.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
		if err != nil {
			return err
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			last = resp.GetBuild()
		}
	})
	if err != nil {
		t.Fatalf("watch build %s: %v", id, err)
	}
	return last
}

// httpGet fetches url and returns its body (status 200 required).
func httpGet(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v %q", url, resp.StatusCode, err, b)
	}
	return string(b)
}
