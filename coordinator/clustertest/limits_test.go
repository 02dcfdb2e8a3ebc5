package clustertest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// matrixSpec is a build file of one step whose command is n bytes, in an
// 8×8 matrix: 64 jobs, each carrying the command.
func matrixSpec(n int) string {
	return "steps:\n  - key: t\n    matrix: {a: [1, 2, 3, 4, 5, 6, 7, 8], b: [1, 2, 3, 4, 5, 6, 7, 8]}\n    commands: [\"echo " +
		strings.Repeat("x", n) + "\"]\n"
}

// TestOversizedBuildRefusedAndListsPage is the failure measured on main:
// a build file that resolves, after matrix expansion, into a build larger
// than a gRPC message made every later list, status and cancel fail. Now
// the build is refused with InvalidArgument naming --max-build-bytes and
// nothing is committed; builds that together exceed the message limit are
// listed page by page, each page under it, and the API keeps working.
func TestOversizedBuildRefusedAndListsPage(t *testing.T) {
	c := Start(t, 1, Options{})
	cl := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 64 × 30 KB: about 2 MB resolved, from a 30 KB file.
	before := c.Leader().C.Store().LastIndex()
	err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: matrixSpec(30 << 10)})
		return err
	})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "the limit is 1048576 bytes (--max-build-bytes)") {
		t.Fatalf("oversized build: %v, want InvalidArgument naming --max-build-bytes", err)
	}
	if after := c.Leader().C.Store().LastIndex(); after != before {
		t.Fatalf("a refused build was committed (index %d → %d)", before, after)
	}
	// A 3 MB submitter is refused at the edge.
	err = Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), Command: "true", Submitter: strings.Repeat("s", 3<<20)})
		return err
	})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "submitter: 3145728 bytes; the limit is 256") {
		t.Fatalf("3 MB submitter: %v", err)
	}

	// Six builds of ~860 KB each (no agent: they stay queued): 5 MB in
	// all, more than one 4 MiB message.
	var ids []string
	for i := range 6 {
		b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 10+i), SpecYaml: matrixSpec(13 << 10)})
		ids = append(ids, b.GetId())
	}
	var got []string
	pages, token := 0, ""
	for {
		var resp *kilnv1.ListBuildsResponse
		if err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			r, err := cc.ListBuilds(ctx, &kilnv1.ListBuildsRequest{Limit: 1000, PageToken: token})
			resp = r
			return err
		}); err != nil {
			t.Fatalf("list builds page %d: %v", pages, err)
		}
		pages++
		if n := proto.Size(resp); n > 3<<20 {
			t.Fatalf("page %d is %d bytes", pages, n)
		}
		for _, b := range resp.GetBuilds() {
			if len(b.GetJobs()) != 64 || b.GetJobs()[0].GetSpec() == nil {
				t.Fatalf("build %s listed with %d jobs", b.GetId(), len(b.GetJobs()))
			}
			got = append(got, b.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	want := fmt.Sprint([]string{ids[5], ids[4], ids[3], ids[2], ids[1], ids[0]})
	if pages < 2 || fmt.Sprint(got) != want {
		t.Fatalf("%d pages listed %v, want %s over at least 2 pages", pages, got, want)
	}
	// A bad token is InvalidArgument; status and cancel still answer.
	if err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.ListBuilds(ctx, &kilnv1.ListBuildsRequest{PageToken: "x"})
		return err
	}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad page token: %v", err)
	}
	if err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		if _, err := cc.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: ids[0]}); err != nil {
			return err
		}
		_, err := cc.CancelBuild(ctx, &kilnv1.CancelBuildRequest{RequestId: reqID(t, 99), BuildId: ids[0]})
		return err
	}); err != nil {
		t.Fatalf("status and cancel after the refusal: %v", err)
	}
}

// TestLogLimitAnnouncedToAgents: the agent learns --max-log-bytes at
// registration; a job printing 1 MB passes with a log of the limit and
// one marker line.
func TestLogLimitAnnouncedToAgents(t *testing.T) {
	c := Start(t, 1, Options{MaxLogBytes: 8 << 10})
	c.StartAgent("a1", nil, 1)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "head -c 1000000 /dev/zero | tr '\\0' z; echo; echo done"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s (%s)", done.GetState(), done.GetReason())
	}
	log := jobLog(c.Leader(), done.GetJobs()[0])
	marker := "\nkiln: log limit of 8192 bytes reached (--max-log-bytes); 991814 further bytes of output were dropped\n"
	if len(log) != 8192+len(marker) || !strings.HasSuffix(log, marker) || strings.Count(log, "kiln: log limit") != 1 {
		t.Fatalf("log of %d bytes ends %q", len(log), log[max(0, len(log)-160):])
	}
}
