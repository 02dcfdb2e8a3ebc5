package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func digestOf(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func files(paths ...string) []*kilnv1.ArtifactFile {
	var out []*kilnv1.ArtifactFile
	for _, p := range paths {
		out = append(out, &kilnv1.ArtifactFile{Path: p, Size: int64(len(p)), Sha256: digestOf(p), Mode: 0o4755})
	}
	return out
}

func (h *harness) registerFiles(agent, job string, attempt uint32, fs []*kilnv1.ArtifactFile) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS, &fsmv1.RegisterArtifacts{
		Agent: agent, TimeUnixMs: h.now, Uploaded: &kilnv1.ArtifactsUploaded{JobId: job, Attempt: attempt, Files: fs}})
}

func (h *harness) artifacts(agent, job string, attempt uint32, paths ...string) *Result {
	h.t.Helper()
	return h.registerFiles(agent, job, attempt, files(paths...))
}

func paths(arts []*kilnv1.Artifact) string {
	var out []string
	for _, a := range arts {
		out = append(out, a.GetStep()+":"+a.GetFile().GetPath())
	}
	return strings.Join(out, ",")
}

func TestRegisterArtifactsFencing(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, &kilnv1.RetryPolicy{OnFailure: 1}))
	stale := func(res *Result) {
		t.Helper()
		wantErr(t, res.Err, ErrStaleAttempt)
		if !staleOutcome(res) || !strings.HasPrefix(res.Outcomes[0].JobID, "1.") {
			t.Fatalf("acks %v", res.Outcomes)
		}
	}
	// Queued (not assigned), unknown job: stale.
	stale(h.artifacts("x", "1.a", 1, "f"))
	stale(h.artifacts("x", "1.nope", 1, "f"))
	h.assign("1.a", 1, "x")
	// Assigned: accepted; wrong agent or attempt: stale.
	if res := h.artifacts("x", "1.a", 1, "f"); res.Err != nil || len(res.Outcomes) != 1 || res.Outcomes[0].Outcome != state.OutcomeAccepted {
		t.Fatalf("assigned: %v %v", res.Err, res.Outcomes)
	}
	stale(h.artifacts("y", "1.a", 1, "g"))
	stale(h.artifacts("x", "1.a", 2, "g"))
	h.start("1.a", 1, "x")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS, &fsmv1.RegisterArtifacts{Agent: "x",
		Uploaded: &kilnv1.ArtifactsUploaded{JobId: "1.a", Attempt: 1, Files: files("d/g")}})
	h.logs("x", "1.a", 1, 1)
	h.finish("1.a", 1, "x", failed, 1) // retried: QUEUED again
	stale(h.artifacts("x", "1.a", 1, "late"))
	if got := paths(h.s.Artifacts("1")); got != "a:d/g,a:f" {
		t.Fatalf("artifacts %s", got)
	}
	a := h.s.Artifacts("1")[0]
	if a.GetFile().GetMode() != 0o755 || a.GetBuildId() != "1" || a.GetJobId() != "1.a" || a.GetAttempt() != 1 {
		t.Fatalf("artifact %v", a)
	}
}

func TestRegisterArtifactsIdempotentAndCurrentAttempt(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("b", 0, &kilnv1.RetryPolicy{OnFailure: 1}), step("a", 0, nil))
	h.assign("1.b", 1, "x")
	h.artifacts("x", "1.b", 1, "z", "y")
	// A resend with changed content leaves the registered file unchanged.
	changed := files("z", "w")
	changed[0].Size = 999
	if res := h.registerFiles("x", "1.b", 1, changed); res.Err != nil {
		t.Fatal(res.Err)
	}
	arts := h.s.JobArtifacts("1.b", 1)
	if paths(arts) != "b:w,b:y,b:z" || arts[2].GetFile().GetSize() != 1 {
		t.Fatalf("after resend: %s %v", paths(arts), arts)
	}
	h.logs("x", "1.b", 1, 1)
	h.finish("1.b", 1, "x", failed, 1)
	h.assign("1.b", 2, "x")
	h.assign("1.a", 1, "y")
	h.artifacts("y", "1.a", 1, "a1")
	// Attempt 2 has none yet; attempt 1 is no longer current.
	if got := paths(h.s.Artifacts("1")); got != "a:a1" {
		t.Fatalf("current attempts: %s", got)
	}
	h.artifacts("x", "1.b", 2, "second")
	if got := paths(h.s.Artifacts("1")); got != "a:a1,b:second" {
		t.Fatalf("current attempts: %s", got)
	}
	if len(h.s.JobArtifacts("1.b", 1)) != 3 || len(h.s.Artifacts("2")) != 0 {
		t.Fatal("old attempt lost or unknown build has artifacts")
	}
	d := h.s.ArtifactDigests()
	for _, p := range []string{"z", "y", "w", "a1", "second"} {
		if !d[digestOf(p)] {
			t.Fatalf("digest of %s missing", p)
		}
	}
	if len(d) != 5 {
		t.Fatalf("%d digests", len(d))
	}
}

func TestRegisterArtifactsValidation(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, nil))
	h.assign("1.a", 1, "x")
	bad := []string{"", ".", "/abs", "../up", "a/../b", "a/./b", "a//b", "a/", `a\b`, "a\x00b", "..", strings.Repeat("x", 1025)}
	for _, p := range bad {
		if res := h.artifacts("x", "1.a", 1, "ok", p); res.Err == nil || len(res.Outcomes) != 0 {
			t.Fatalf("path %q accepted", p)
		} else {
			wantErr(t, res.Err, ErrInvalidCommand)
		}
	}
	fs := files("f")
	fs[0].Sha256 = "ABC"
	wantErr(t, h.registerFiles("x", "1.a", 1, fs).Err, ErrInvalidCommand)
	fs = files("f")
	fs[0].Size = -1
	wantErr(t, h.registerFiles("x", "1.a", 1, fs).Err, ErrInvalidCommand)
	if len(h.s.Artifacts("1")) != 0 {
		t.Fatal("a rejected command registered files")
	}
	// ..x and x.. are ordinary names; 1024 bytes is allowed.
	if res := h.artifacts("x", "1.a", 1, "..x", "x..", strings.Repeat("y", 1024)); res.Err != nil {
		t.Fatal(res.Err)
	}
	// At most 10,000 files per attempt, counting earlier registrations.
	var many []string
	for i := range state.MaxArtifactsPerAttempt - 3 {
		many = append(many, fmt.Sprintf("m/%05d", i))
	}
	if res := h.artifacts("x", "1.a", 1, many...); res.Err != nil {
		t.Fatal(res.Err)
	}
	wantErr(t, h.artifacts("x", "1.a", 1, "one-too-many").Err, ErrInvalidCommand)
	// Resending registered paths is still fine at the limit.
	if res := h.artifacts("x", "1.a", 1, "..x", many[0]); res.Err != nil {
		t.Fatal(res.Err)
	}
	if n := len(h.s.JobArtifacts("1.a", 1)); n != state.MaxArtifactsPerAttempt {
		t.Fatalf("%d files", n)
	}
}

func TestArtifactsSnapshotRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, nil))
	h.assign("1.a", 1, "x")
	h.artifacts("x", "1.a", 1, "b/c", "a")
	data := snapshotBytes(t, h.f)
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if got := paths(fresh.s.Artifacts("1")); got != "a:a,a:b/c" {
		t.Fatalf("restored %s", got)
	}
	if len(fresh.s.ArtifactDigests()) != 2 {
		t.Fatal("digests not restored")
	}
	// Registration stays idempotent after a restore.
	fresh.idx = h.idx
	if res := fresh.artifacts("x", "1.a", 1, "a", "new"); res.Err != nil || len(fresh.s.JobArtifacts("1.a", 1)) != 3 {
		t.Fatalf("after restore: %v", res.Err)
	}
}
