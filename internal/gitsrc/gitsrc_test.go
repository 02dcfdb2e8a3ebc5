package gitsrc_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture: main (3 commits), branch feature, lightweight tag light, annotated
// tag v1, and a tag named like a branch ("both").
type fixture struct {
	r                            *gittest.Repo
	c1, c2, c3, feature, bothTag string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	r := gittest.New(t, "main")
	f := fixture{r: r}
	f.c1 = r.Commit("one", map[string]string{"README": "one\n"})
	r.Git("tag", "light")
	r.Git("tag", "-a", "v1", "-m", "release one")
	f.c2 = r.Commit("two", map[string]string{"README": "two\n"})
	f.bothTag = f.c2
	r.Git("tag", "both")
	r.Git("checkout", "-q", "-b", "feature")
	f.feature = r.Commit("feature", map[string]string{"feature.txt": "feature\n"})
	r.Git("branch", "both")
	r.Git("checkout", "-q", "main")
	f.c3 = r.Commit("three", map[string]string{"README": "three\n", "dir/.kiln.yaml": "steps:\n  - run: make\n"})
	return f
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestResolve(t *testing.T) {
	f := newFixture(t)
	url := f.r.URL()
	cases := []struct {
		ref  string
		want gitsrc.Resolved
	}{
		{"", gitsrc.Resolved{Commit: f.c3, Branch: "main"}},
		{"HEAD", gitsrc.Resolved{Commit: f.c3, Branch: "main"}},
		{"main", gitsrc.Resolved{Commit: f.c3, Branch: "main"}},
		{"refs/heads/main", gitsrc.Resolved{Commit: f.c3, Branch: "main"}},
		{"feature", gitsrc.Resolved{Commit: f.feature, Branch: "feature"}},
		{"light", gitsrc.Resolved{Commit: f.c1, Tag: "light"}},
		// An annotated tag resolves to its commit, not the tag object.
		{"v1", gitsrc.Resolved{Commit: f.c1, Tag: "v1"}},
		// A branch wins over a tag of the same name...
		{"both", gitsrc.Resolved{Commit: f.feature, Branch: "both"}},
		// ...unless the tag is named explicitly.
		{"refs/tags/both", gitsrc.Resolved{Commit: f.bothTag, Tag: "both"}},
		// A full commit id is taken as is (no remote call).
		{f.c2, gitsrc.Resolved{Commit: f.c2}},
		{strings.ToUpper(f.c2), gitsrc.Resolved{Commit: f.c2}},
	}
	for _, tc := range cases {
		got, err := gitsrc.Resolve(ctx(t), url, tc.ref)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.ref, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Resolve(%q) = %+v, want %+v", tc.ref, got, tc.want)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	f := newFixture(t)
	_, err := gitsrc.Resolve(ctx(t), f.r.URL(), "nope")
	if !errors.Is(err, gitsrc.ErrRefNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown ref: %v, want ErrRefNotFound naming the ref", err)
	}
	_, err = gitsrc.Resolve(ctx(t), f.r.URL(), f.c3[:8])
	if !errors.Is(err, gitsrc.ErrRefNotFound) || !strings.Contains(err.Error(), "40 hex") {
		t.Errorf("short sha: %v, want ErrRefNotFound with a hint", err)
	}
	_, err = gitsrc.Resolve(ctx(t), "file://"+filepath.Join(t.TempDir(), "missing"), "main")
	if !errors.Is(err, gitsrc.ErrUnreachable) {
		t.Errorf("missing repo: %v, want ErrUnreachable", err)
	}
	_, err = gitsrc.Resolve(ctx(t), f.r.URL(), "--upload-pack=touch /tmp/x")
	if !errors.Is(err, gitsrc.ErrInvalidRef) {
		t.Errorf("option-like ref: %v, want ErrInvalidRef", err)
	}
	// An empty repository has no HEAD commit.
	empty := gittest.New(t, "main")
	_, err = gitsrc.Resolve(ctx(t), empty.URL(), "")
	if !errors.Is(err, gitsrc.ErrRefNotFound) {
		t.Errorf("empty repo HEAD: %v, want ErrRefNotFound", err)
	}
}

func TestResolveTimeout(t *testing.T) {
	// A listener that accepts and never answers: git:// waits forever.
	old := gitsrc.ResolveTimeout
	gitsrc.ResolveTimeout = 300 * time.Millisecond
	t.Cleanup(func() { gitsrc.ResolveTimeout = old })
	addr := silentServer(t)
	start := time.Now()
	_, err := gitsrc.Resolve(context.Background(), "git://"+addr+"/repo", "main")
	if !errors.Is(err, gitsrc.ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Resolve took %s despite the timeout", d)
	}
}

func TestValidateURL(t *testing.T) {
	good := []string{
		"file:///srv/git/repo.git", "https://github.com/kiln-ci/kiln.git", "http://127.0.0.1:8080/r",
		"git://127.0.0.1:9418/repo", "ssh://git@example.com/repo.git", "git@github.com:kiln-ci/kiln.git",
		"example.com:repo.git", "https://user:secret@example.com/r.git",
	}
	for _, u := range good {
		if err := gitsrc.ValidateURL(u); err != nil {
			t.Errorf("ValidateURL(%q) = %v, want ok", u, err)
		}
	}
	bad := []string{
		"", "-u", "--upload-pack=touch /tmp/pwned", "ext::sh -c touch% /tmp/pwned", "/srv/git/repo", "repo",
		"ftp://example.com/r", "file://", "file://host/r", "https://", "https://-oProxyCommand=x/r",
		"ssh://-oProxyCommand=x/r", "https://example.com/r\nx", "fd::17", "::", "user@host::path",
	}
	for _, u := range bad {
		if err := gitsrc.ValidateURL(u); !errors.Is(err, gitsrc.ErrInvalidURL) {
			t.Errorf("ValidateURL(%q) = %v, want ErrInvalidURL", u, err)
		}
	}
	if _, err := gitsrc.Resolve(ctx(t), "-oProxyCommand=x", "main"); !errors.Is(err, gitsrc.ErrInvalidURL) {
		t.Errorf("Resolve with option-like URL: %v", err)
	}
	if err := gitsrc.CheckoutTo(ctx(t), t.TempDir(), "--upload-pack=x", strings.Repeat("a", 40), nil); !errors.Is(err, gitsrc.ErrInvalidURL) {
		t.Errorf("Checkout with option-like URL: %v", err)
	}
	if got := gitsrc.Redact("https://user:secret@example.com/r.git"); strings.Contains(got, "secret") {
		t.Errorf("Redact kept the password: %s", got)
	}
}

func TestCheckoutExactCommit(t *testing.T) {
	f := newFixture(t)
	mid := f.r.Commit("four", map[string]string{"README": "four\n"}) // advertised by no ref
	f.r.Commit("five", nil)
	dir := filepath.Join(t.TempDir(), "ws")
	var log bytes.Buffer
	if err := gitsrc.CheckoutTo(ctx(t), dir, f.r.URL(), mid, &log); err != nil {
		t.Fatalf("checkout: %v\n%s", err, log.String())
	}
	checkWorkspace(t, dir, mid, "four\n")
	if !strings.Contains(log.String(), "checked out "+mid) || strings.Contains(log.String(), "fetching all branches") {
		t.Errorf("want a shallow fetch by id and the checkout line:\n%s", log.String())
	}
	// The fixture has tags, so the history was deepened to reach them
	// (TestCheckoutFetchesTagsOfItsHistory); without tags it stays one
	// commit deep.
	bare := gittest.New(t, "main")
	bare.Commit("a", map[string]string{"f": "a\n"})
	tip := bare.Commit("b", map[string]string{"f": "b\n"})
	dir = t.TempDir()
	if err := gitsrc.CheckoutTo(ctx(t), dir, bare.URL(), tip, nil); err != nil {
		t.Fatal(err)
	}
	if n := git(t, dir, "rev-list", "--count", "HEAD"); n != "1" {
		t.Errorf("history has %s commits, want 1 (shallow)", n)
	}
}

func TestCheckoutFallsBackToFullFetch(t *testing.T) {
	f := newFixture(t)
	mid := f.r.Commit("four", map[string]string{"README": "four\n"}) // advertised by no ref
	f.r.Commit("five", nil)
	// Protocol v0 servers refuse unadvertised objects by default.
	t.Setenv("GIT_CONFIG_COUNT", "1")
	t.Setenv("GIT_CONFIG_KEY_0", "protocol.version")
	t.Setenv("GIT_CONFIG_VALUE_0", "0")
	dir := t.TempDir()
	var log bytes.Buffer
	if err := gitsrc.CheckoutTo(ctx(t), dir, f.r.URL(), mid, &log); err != nil {
		t.Fatalf("checkout: %v\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), "fetching all branches") {
		t.Errorf("expected the full-fetch fallback:\n%s", log.String())
	}
	checkWorkspace(t, dir, mid, "four\n")
	// A commit that exists nowhere fails clearly.
	err := gitsrc.CheckoutTo(ctx(t), t.TempDir(), f.r.URL(), strings.Repeat("ab", 20), nil)
	if !errors.Is(err, gitsrc.ErrRefNotFound) {
		t.Errorf("unknown commit: %v, want ErrRefNotFound", err)
	}
}

func TestCheckoutUnknownCommitAndRepo(t *testing.T) {
	f := newFixture(t)
	err := gitsrc.CheckoutTo(ctx(t), t.TempDir(), f.r.URL(), strings.Repeat("ab", 20), nil)
	if err == nil {
		t.Fatal("checkout of a commit that does not exist succeeded")
	}
	err = gitsrc.CheckoutTo(ctx(t), t.TempDir(), "file:///nonexistent/repo", f.c1, nil)
	if !errors.Is(err, gitsrc.ErrUnreachable) {
		t.Errorf("missing repo: %v, want ErrUnreachable", err)
	}
	if err := gitsrc.CheckoutTo(ctx(t), t.TempDir(), f.r.URL(), "main", nil); !errors.Is(err, gitsrc.ErrInvalidRef) {
		t.Errorf("checkout of a branch name: %v, want ErrInvalidRef (commits only)", err)
	}
}

func TestCheckoutCanceled(t *testing.T) {
	addr := silentServer(t)
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := gitsrc.CheckoutTo(c, t.TempDir(), "git://"+addr+"/repo", strings.Repeat("ab", 20), nil)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, gitsrc.ErrUnreachable) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("checkout took %s after cancel", d)
	}
}

func TestReadFile(t *testing.T) {
	f := newFixture(t)
	got, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c3, "dir/.kiln.yaml", 1<<20)
	if err != nil || string(got) != "steps:\n  - run: make\n" {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	if got, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c1, "./README", 1<<20); err != nil || string(got) != "one\n" {
		t.Fatalf("ReadFile(c1) = %q, %v", got, err)
	}
	if _, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c1, "dir/.kiln.yaml", 1<<20); !errors.Is(err, gitsrc.ErrFileNotFound) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c3, "dir", 1<<20); !errors.Is(err, gitsrc.ErrFileNotFound) {
		t.Errorf("directory: %v", err)
	}
	if _, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c3, "README", 3); !errors.Is(err, gitsrc.ErrFileTooLarge) {
		t.Errorf("too large: %v", err)
	}
	for _, p := range []string{"../etc/passwd", "/etc/passwd", "", "-x"} {
		if _, err := gitsrc.ReadFile(ctx(t), f.r.URL(), f.c3, p, 1<<20); !errors.Is(err, gitsrc.ErrFileNotFound) {
			t.Errorf("path %q: %v", p, err)
		}
	}
	// The temp repository is removed.
	left, _ := filepath.Glob(filepath.Join(os.TempDir(), "kiln-gitsrc-*"))
	for _, l := range left {
		t.Logf("left behind (maybe another process): %s", l)
	}
}

func TestGitDaemon(t *testing.T) {
	f := newFixture(t)
	url := f.r.Daemon()
	res, err := gitsrc.Resolve(ctx(t), url, "main")
	if err != nil || res.Commit != f.c3 || res.Branch != "main" {
		t.Fatalf("Resolve over git:// = %+v, %v", res, err)
	}
	res, err = gitsrc.Resolve(ctx(t), url, "")
	if err != nil || res.Commit != f.c3 {
		t.Fatalf("Resolve HEAD over git:// = %+v, %v", res, err)
	}
	dir := t.TempDir()
	if err := gitsrc.CheckoutTo(ctx(t), dir, url, f.feature, nil); err != nil {
		t.Fatalf("checkout over git://: %v", err)
	}
	checkWorkspace(t, dir, f.feature, "two\n")
	if b, err := os.ReadFile(filepath.Join(dir, "feature.txt")); err != nil || string(b) != "feature\n" {
		t.Fatalf("feature.txt = %q, %v", b, err)
	}
	data, err := gitsrc.ReadFile(ctx(t), url, f.c3, "dir/.kiln.yaml", 1<<20)
	if err != nil || !strings.Contains(string(data), "make") {
		t.Fatalf("ReadFile over git:// = %q, %v", data, err)
	}
	if _, err := gitsrc.Resolve(ctx(t), strings.TrimSuffix(url, "/repo")+"/nothere", "main"); !errors.Is(err, gitsrc.ErrUnreachable) {
		t.Fatalf("missing repo over git://: %v", err)
	}
}

func checkWorkspace(t *testing.T, dir, commit, readme string) {
	t.Helper()
	if head := git(t, dir, "rev-parse", "HEAD"); head != commit {
		t.Fatalf("HEAD = %s, want %s", head, commit)
	}
	b, err := os.ReadFile(filepath.Join(dir, "README"))
	if err != nil || string(b) != readme {
		t.Fatalf("README = %q, %v; want %q", b, err, readme)
	}
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}

// silentServer accepts TCP connections and never answers; it is closed at
// cleanup.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

// A shallow checkout gets the tags of its history: git describe --tags
// works, and tags of other branches' commits are not fetched.
func TestCheckoutFetchesTagsOfItsHistory(t *testing.T) {
	f := newFixture(t)
	// c3 is main's tip; light and v1 point at c1, both at c2; a tag on the
	// feature branch is not in main's history.
	f.r.Git("tag", "only-feature", f.feature)
	mid := f.r.Commit("four", map[string]string{"README": "four\n"})
	dir := t.TempDir()
	var log bytes.Buffer
	if err := gitsrc.CheckoutTo(ctx(t), dir, f.r.URL(), mid, &log); err != nil {
		t.Fatalf("checkout: %v\n%s", err, log.String())
	}
	if got := git(t, dir, "describe", "--tags"); !strings.HasPrefix(got, "both-2-g") {
		t.Errorf("git describe --tags = %q, want both-2-g...\n%s", got, log.String())
	}
	tags := git(t, dir, "tag", "--list")
	for _, want := range []string{"both", "light", "v1"} {
		if !strings.Contains(tags, want) {
			t.Errorf("tag %s missing: %q", want, tags)
		}
	}
	if strings.Contains(tags, "only-feature") {
		t.Errorf("a tag outside the history was fetched: %q", tags)
	}
	// The annotated tag arrived as a tag object.
	if typ := git(t, dir, "cat-file", "-t", "v1"); typ != "tag" {
		t.Errorf("v1 is a %s, want an annotated tag", typ)
	}
}
