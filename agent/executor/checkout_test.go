package executor

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestCheckoutBeforeCommands(t *testing.T) {
	r := gittest.New(t, "main")
	first := r.Commit("one", map[string]string{"hello.txt": "first\n"})
	r.Commit("two", map[string]string{"hello.txt": "second\n"})
	e := newExec(t)
	o, out := run(t, e, Spec{JobID: "1.a", Attempt: 1,
		Commands: []string{"git rev-parse HEAD", "cat hello.txt", "git status --porcelain | wc -l"},
		Source:   &kilnv1.Source{GitUrl: r.URL(), Commit: first}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome %+v\n%s", o, out)
	}
	for _, want := range []string{"kiln: fetching " + first, "kiln: checked out " + first, first + "\nfirst\n0\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckoutFailureFailsAttempt(t *testing.T) {
	r := gittest.New(t, "main")
	r.Commit("one", nil)
	e := newExec(t)
	o, out := run(t, e, Spec{JobID: "1.a", Attempt: 1, Commands: []string{"echo should-not-run"},
		Source: &kilnv1.Source{GitUrl: r.URL(), Commit: strings.Repeat("ab", 20)}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(o.Reason, "checkout failed: ") {
		t.Fatalf("outcome %+v, want FAILED with a checkout reason", o)
	}
	if strings.Contains(out, "should-not-run") {
		t.Fatalf("commands ran after a failed checkout:\n%s", out)
	}
	o, _ = run(t, e, Spec{JobID: "1.b", Attempt: 1, Commands: []string{"true"},
		Source: &kilnv1.Source{GitUrl: "--upload-pack=touch /tmp/x", Commit: strings.Repeat("ab", 20)}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.Contains(o.Reason, "invalid git URL") {
		t.Fatalf("option-like URL: %+v", o)
	}
}

func TestCheckoutCancelAndTimeout(t *testing.T) {
	gittest.RequireGit(t)
	// A git:// server that never answers keeps the checkout waiting.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for c := range accepted {
			c.Close()
		}
	})
	src := &kilnv1.Source{GitUrl: "git://" + l.Addr().String() + "/repo", Commit: strings.Repeat("ab", 20)}
	e := newExec(t)

	out := newSyncBuffer("kiln: fetching")
	p, err := e.Start(Spec{JobID: "1.a", Attempt: 1, Commands: []string{"true"}, Source: src}, out)
	if err != nil {
		t.Fatal(err)
	}
	<-out.seen
	p.Cancel("user said stop")
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not stop the checkout")
	}
	if o := p.Wait(); o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED || o.Reason != "user said stop" {
		t.Fatalf("canceled checkout: %+v", o)
	}

	o, _ := run(t, e, Spec{JobID: "1.b", Attempt: 1, Commands: []string{"true"}, Source: src, Timeout: 300 * time.Millisecond})
	if o.Result != kilnv1.JobResult_JOB_RESULT_TIMED_OUT {
		t.Fatalf("timed-out checkout: %+v", o)
	}
}
