package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// web is a cookie-keeping HTTP client of one dashboard that does not
// follow redirects.
type web struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newWeb(t *testing.T, base string) *web {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &web{t: t, base: base, c: &http.Client{Transport: tr, Jar: jar, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (w *web) do(method, path string, form url.Values) (int, http.Header, string) {
	w.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, w.base+path, body)
	if err != nil {
		w.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := w.c.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// csrf is the CSRF token the pages put in their forms: the value of the
// CSRF cookie a page view sets.
func (w *web) csrf() string {
	w.t.Helper()
	w.do(http.MethodGet, "/", nil)
	u, _ := url.Parse(w.base)
	for _, c := range w.c.Jar.Cookies(u) {
		if c.Name == "kiln_csrf" && regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(c.Value) {
			return c.Value
		}
	}
	w.t.Fatal("no CSRF cookie after a page view")
	return ""
}

// TestLiveStreamAndBadInput (no browser): a finished build's live stream
// sends its log and state and ends with "end"; bad input gets a clear
// error page with the right status and changes nothing.
func TestLiveStreamAndBadInput(t *testing.T) {
	c := clustertest.Start(t, 1, clustertest.Options{HTTP: true})
	c.StartAgent("a1", nil, 1)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name(), Command: "echo one; echo two"})
	waitFinished(t, c, b.GetId())
	gated := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name() + "-gated", SpecYaml: `stages:
  - steps:
      - key: gate
        approval: {}
`})
	w := newWeb(t, "http://"+c.Nodes[0].C.HTTPAddr())

	code, hdr, body := w.do(http.MethodGet, "/builds/"+b.GetId()+"/live", nil)
	if code != http.StatusOK || hdr.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live: %d %s", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{`"text":"one\ntwo\n"`, `event: build`, `"state":"passed"`} {
		if !strings.Contains(body, want) {
			t.Errorf("live stream lacks %s:\n%s", want, body)
		}
	}
	if !strings.HasSuffix(body, "event: end\ndata: {}\n\n") {
		t.Errorf("live stream does not end with event end:\n%s", body)
	}

	csrf := w.csrf()
	for _, tc := range []struct {
		method, path string
		form         url.Values
		code         int
		msg          string
	}{
		{"GET", "/?state=bogus", nil, 400, "bogus is not a build state"},
		{"GET", "/?page=xyz", nil, 400, "page_token"},
		{"GET", "/builds/999", nil, 404, "999"},
		{"GET", "/builds/" + b.GetId() + "?tab=logs", nil, 400, "tab: logs is not one of"},
		{"GET", "/builds/999/live", nil, 200, "event: failure"},
		{"GET", "/builds/" + b.GetId() + "/artifacts/" + strings.Repeat("0", 64), nil, 404, "has no artifact"},
		{"POST", "/builds/" + gated.GetId() + "/approval", url.Values{"csrf": {csrf}, "step": {"gate"}, "decision": {"maybe"}}, 400, "decision: must be approve or reject"},
		{"POST", "/builds/" + gated.GetId() + "/approval", url.Values{"csrf": {"0" + csrf[1:]}, "step": {"gate"}, "decision": {"approve"}}, 403, "CSRF"},
		{"POST", "/builds/" + gated.GetId() + "/approval", url.Values{"csrf": {csrf}, "step": {"nope"}, "decision": {"approve"}}, 404, "nope"},
		{"GET", "/nothing-here", nil, 404, ""},
	} {
		code, _, body := w.do(tc.method, tc.path, tc.form)
		if code != tc.code || !strings.Contains(body, tc.msg) {
			t.Errorf("%s %s: %d, want %d with %q:\n%s", tc.method, tc.path, code, tc.code, tc.msg, body)
		}
	}
	if got, _ := c.Nodes[0].C.Store().Build(gated.GetId()); got.GetState() != kilnv1.BuildState_BUILD_STATE_BLOCKED {
		t.Fatalf("gated build %s after refused decisions, want blocked", got.GetState())
	}

	// Reject through the form: the build fails, by the name given.
	code, hdr, _ = w.do(http.MethodPost, "/builds/"+gated.GetId()+"/approval",
		url.Values{"csrf": {csrf}, "step": {"gate"}, "decision": {"reject"}, "by": {"bob@desk"}, "comment": {"not today"}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/builds/"+gated.GetId() {
		t.Fatalf("reject: %d %s", code, hdr.Get("Location"))
	}
	done := waitFinished(t, c, gated.GetId())
	if a := done.GetJobs()[0].GetApproval(); done.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || a.GetApproved() || a.GetBy() != "bob@desk" || a.GetComment() != "not today" {
		t.Fatalf("after reject: %s, approval %v", done.GetState(), a)
	}

	// A login's next stays on this site.
	code, hdr, _ = w.do(http.MethodPost, "/login", url.Values{"csrf": {csrf}, "token": {"kiln_x"}, "next": {"//evil.example/"}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/" {
		t.Fatalf("login with an off-site next: %d %q, want a redirect to /", code, hdr.Get("Location"))
	}
}

// TestShutdownEndsLiveStreams: a live stream of a running build ends when
// its coordinator stops, instead of holding the HTTP server's shutdown.
func TestShutdownEndsLiveStreams(t *testing.T) {
	c := clustertest.Start(t, 1, clustertest.Options{HTTP: true})
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name(), SpecYaml: `stages:
  - steps:
      - key: gate
        approval: {}
`})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Nodes[0].C.HTTPAddr()+"/builds/"+b.GetId()+"/live", nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The first state event: the stream is up and following.
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), `"state":"blocked"`) {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("live stream ended early: %v\n%s", err, got.String())
		}
	}
	c.Stop(c.Nodes[0])
	// The shutdown hook ends the handler: the response ends cleanly (a
	// connection cut at the end of the grace period would be an error).
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("live stream not ended by the shutdown: %v", err)
	}
}

// TestFollowerDashboardOverTLS: the dashboard of a follower, in a 3-node
// cluster serving gRPC over TLS, reads the builds, shows every member
// with its lag, and its approval reaches the leader (NotLeader redirect).
func TestFollowerDashboardOverTLS(t *testing.T) {
	c := clustertest.Start(t, 3, clustertest.Options{HTTP: true, TLS: &clustertest.TLSOptions{}})
	gated := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: t.Name(), SpecYaml: `stages:
  - steps:
      - key: gate
        approval: {}
`})
	f := c.Followers()[0]
	w := newWeb(t, "http://"+f.C.HTTPAddr())
	code, _, body := w.do(http.MethodGet, "/", nil)
	if code != http.StatusOK || !strings.Contains(body, `data-id="`+gated.GetId()+`"`) {
		t.Fatalf("follower history: %d\n%s", code, body)
	}
	code, _, body = w.do(http.MethodGet, "/cluster", nil)
	if code != http.StatusOK || strings.Count(body, "<tr") != 4 || strings.Contains(body, "unreachable") || !strings.Contains(body, `id="leader">`+c.Leader().ID+`<`) {
		t.Fatalf("follower cluster page: %d\n%s", code, body)
	}
	code, hdr, body := w.do(http.MethodPost, "/builds/"+gated.GetId()+"/approval",
		url.Values{"csrf": {w.csrf()}, "step": {"gate"}, "decision": {"approve"}, "by": {"fran@desk"}})
	if code != http.StatusSeeOther {
		t.Fatalf("approve on a follower: %d %s\n%s", code, hdr.Get("Location"), body)
	}
	if b := waitFinished(t, c, gated.GetId()); b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build after approval: %s", b.GetState())
	}
}
