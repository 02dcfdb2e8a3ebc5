package fsm

import (
	"bytes"
	"io"
	"slices"
	"strconv"
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// submitRetained submits a one-step build "a" with a retention and an
// uploaded source archive (digest of src; none when src is "").
func (h *harness) submitRetained(rid string, retentionMs int64, src string) string {
	h.t.Helper()
	cmd := &fsmv1.SubmitBuild{RequestId: rid, Name: rid, Steps: []*kilnv1.StepSpec{step("a", 0, nil)},
		TimeUnixMs: h.now, ArtifactRetentionMs: retentionMs}
	if src != "" {
		cmd.Source = &kilnv1.Source{ArchiveSha256: digestOf(src), ArchiveSize: 1}
	}
	return h.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd).Build.GetId()
}

// produce runs build id's step a, registering one artifact named path.
func (h *harness) produce(id, path string) {
	h.t.Helper()
	job := id + ".a"
	h.assign(job, 1, "x")
	h.start(job, 1, "x")
	if res := h.artifacts("x", job, 1, path); res.Err != nil {
		h.t.Fatal(res.Err)
	}
	h.logs("x", job, 1, 1)
	h.finish(job, 1, "x", passed, 1)
	h.wantBuild(id, kilnv1.BuildState_BUILD_STATE_PASSED)
}

func (h *harness) expire(now, def int64) []string {
	h.t.Helper()
	return h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_ARTIFACTS, &fsmv1.ExpireArtifacts{TimeUnixMs: now, DefaultRetentionMs: def}).Expired
}

func TestExpireArtifacts(t *testing.T) {
	h := newHarness(t)
	short := h.submitRetained("short", 100, "src-short")
	h.produce(short, "f-short")
	deflt := h.submitRetained("default", 0, "")
	h.produce(deflt, "f-default")
	long := h.submitRetained("long", 1_000_000, "")
	h.produce(long, "f-long")
	open := h.submitRetained("open", 1, "src-open") // never finished
	if b := h.build(short); b.GetArtifactRetentionMs() != 100 {
		t.Fatalf("retention %d", b.GetArtifactRetentionMs())
	}
	fin := h.build(short).GetFinishedUnixMs()
	last := h.build(long).GetFinishedUnixMs()

	// Before its deadline nothing is due; exactly at it the build expires.
	if h.s.ArtifactsDue(fin+99, 0) {
		t.Fatal("due before the deadline")
	}
	if got := h.expire(fin+99, 0); len(got) != 0 {
		t.Fatalf("expired early: %v", got)
	}
	// Default 0: builds without their own retention are kept forever.
	now := last + 500
	if !h.s.ArtifactsDue(now, 0) {
		t.Fatal("not due")
	}
	if got := h.expire(now, 0); !slices.Equal(got, []string{short}) {
		t.Fatalf("expired %v, want [%s]", got, short)
	}
	if arts := h.s.Artifacts(short); len(arts) != 0 {
		t.Fatalf("artifacts left: %v", arts)
	}
	if !h.build(short).GetArtifactsExpired() || h.build(deflt).GetArtifactsExpired() || h.build(long).GetArtifactsExpired() {
		t.Fatal("artifacts_expired flags")
	}
	if h.s.ArtifactDigests()[digestOf("f-short")] || !h.s.ArtifactDigests()[digestOf("f-default")] {
		t.Fatalf("digests %v", h.s.ArtifactDigests())
	}
	src := h.s.SourceArchiveDigests()
	if src[digestOf("src-short")] || !src[digestOf("src-open")] {
		t.Fatalf("source digests %v", src)
	}
	// Idempotent.
	if got := h.expire(now, 0); len(got) != 0 || h.s.ArtifactsDue(now, 0) {
		t.Fatalf("second expiry: %v", got)
	}
	// A short default expires the default build, not the one whose own
	// (longer) retention wins.
	if got := h.expire(now, 1); !slices.Equal(got, []string{deflt}) {
		t.Fatalf("expired %v, want [%s]", got, deflt)
	}
	if len(h.s.Artifacts(long)) != 1 {
		t.Fatal("long retention lost its artifacts")
	}
	// Retrying an expired build is refused: its inputs are gone.
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD, &fsmv1.RetryBuild{RequestId: "rt", BuildId: short, TimeUnixMs: h.now}).Err, ErrInvalidState)
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_ARTIFACTS, &fsmv1.ExpireArtifacts{TimeUnixMs: now, DefaultRetentionMs: -1}).Err, ErrInvalidCommand)

	// The snapshot keeps artifacts_expired (and so the index).
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	if !fresh.build(short).GetArtifactsExpired() || !fresh.build(deflt).GetArtifactsExpired() || fresh.build(long).GetArtifactsExpired() {
		t.Fatal("artifacts_expired not restored")
	}
	if fresh.s.ArtifactsDue(now, 1) {
		t.Fatal("expired builds due again after restore")
	}
	// Both replicas expire the long build the same way.
	for _, r := range []*harness{h, fresh} {
		if got := r.expire(last+1_000_000, 1); !slices.Equal(got, []string{long}) {
			t.Fatalf("expired %v, want [%s]", got, long)
		}
	}
	if h.build(open).GetArtifactsExpired() || !h.s.SourceArchiveDigests()[digestOf("src-open")] {
		t.Fatal("an unfinished build expired")
	}
	if len(h.s.ArtifactDigests()) != 0 {
		t.Fatalf("digests left %v", h.s.ArtifactDigests())
	}
}

func TestExpireArtifactsIsBounded(t *testing.T) {
	h := newHarness(t)
	n := 1002
	for i := range n {
		id := h.submitRetained("b"+strconv.Itoa(i), 1, "")
		h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: id, TimeUnixMs: h.now})
	}
	now := h.now + 10
	first := h.expire(now, 0)
	if len(first) != 1000 || first[0] != "1" || first[999] != "1000" {
		t.Fatalf("first command expired %d builds (%v...)", len(first), first[:1])
	}
	if got := h.expire(now, 0); !slices.Equal(got, []string{"1001", "1002"}) {
		t.Fatalf("second command expired %v", got)
	}
}
