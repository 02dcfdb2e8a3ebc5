package fsm

import (
	"bytes"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func (h *harness) expireBuilds(now, keep int64) []string {
	h.t.Helper()
	return h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_BUILDS, &fsmv1.ExpireBuilds{TimeUnixMs: now, RetentionMs: keep}).Expired
}

// runWith runs build id's step a with the artifacts paths, a test report
// and two log chunks.
func (h *harness) runWith(id string, paths ...string) {
	h.t.Helper()
	job := id + ".a"
	h.assign(job, 1, "x")
	h.start(job, 1, "x")
	if res := h.artifacts("x", job, 1, paths...); res.Err != nil {
		h.t.Fatal(res.Err)
	}
	if res := h.tests("x", job, 1, &kilnv1.TestReport{File: "r.xml", Summary: &kilnv1.TestSummary{Total: 1, Passed: 1}}); res.Err != nil {
		h.t.Fatal(res.Err)
	}
	h.logs("x", job, 1, 1, 2)
	h.finish(job, 1, "x", passed, 2)
	h.wantBuild(id, kilnv1.BuildState_BUILD_STATE_PASSED)
}

func TestExpireBuilds(t *testing.T) {
	h := newHarness(t)
	var removed []state.RemovedBuilds
	h.s.OnBuildsRemoved(func(r state.RemovedBuilds) { removed = append(removed, r) })

	old := h.submitRetained("old", 0, "src-old")
	h.runWith(old, "only-old", "shared")
	newer := h.submitRetained("newer", 0, "src-newer")
	h.runWith(newer, "shared")
	open := h.submitRetained("open", 0, "src-old") // never finishes; shares old's source
	finOld, finNewer := h.build(old).GetFinishedUnixMs(), h.build(newer).GetFinishedUnixMs()
	if finNewer <= finOld {
		t.Fatalf("finish times %d %d", finOld, finNewer)
	}

	// Retention 0 keeps builds forever; before the deadline nothing goes.
	if h.s.BuildsDue(1<<62, 0) || len(h.expireBuilds(1<<62, 0)) != 0 {
		t.Fatal("retention 0 expired a build")
	}
	if h.s.BuildsDue(finOld+99, 100) || len(h.expireBuilds(finOld+99, 100)) != 0 {
		t.Fatal("expired before the deadline")
	}
	if !h.s.BuildsDue(finOld+100, 100) {
		t.Fatal("not due at the deadline")
	}
	if got := h.expireBuilds(finOld+100, 100); !slices.Equal(got, []string{old}) {
		t.Fatalf("expired %v, want [%s]", got, old)
	}
	// Everything recorded under the build is gone.
	if _, ok := h.s.Build(old); ok {
		t.Fatal("build still there")
	}
	if _, ok := h.s.Job(old + ".a"); ok {
		t.Fatal("job still there")
	}
	if logs := h.s.Logs(old+".a", 1, 0, 0); len(logs) != 0 {
		t.Fatalf("log chunks left: %v", logs)
	}
	if len(h.s.Artifacts(old)) != 0 || len(h.s.TestReports(old, false)) != 0 {
		t.Fatal("artifacts or test reports left")
	}
	if _, ok := h.s.RequestBuild("old"); ok {
		t.Fatal("request id still recorded")
	}
	// The newer build keeps its log, artifacts and reports.
	if len(h.s.Logs(newer+".a", 1, 0, 0)) != 2 || len(h.s.Artifacts(newer)) != 1 || len(h.s.TestReports(newer, false)) != 1 {
		t.Fatal("the newer build lost records")
	}
	// The hook names the build, its jobs and only the blobs nothing else
	// refers to: "shared" is the newer build's too, src-old the open build's.
	if len(removed) != 1 || !slices.Equal(removed[0].BuildIDs, []string{old}) || !slices.Equal(removed[0].JobIDs, []string{old + ".a"}) ||
		!slices.Equal(removed[0].Blobs, []string{digestOf("only-old")}) {
		t.Fatalf("hook got %+v", removed)
	}
	// The request id of an expired build may be used again: a new build.
	if b := h.submitRetained("old", 0, ""); b == old {
		t.Fatal("request id answered with the expired build")
	}
	// Retrying or reading the expired build: not found.
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD, &fsmv1.RetryBuild{RequestId: "rt", BuildId: old, TimeUnixMs: h.now}).Err, ErrNotFound)
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_BUILDS, &fsmv1.ExpireBuilds{TimeUnixMs: h.now, RetentionMs: -1}).Err, ErrInvalidCommand)

	// A replica restored from a snapshot expires the newer build the same way.
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*harness{h, fresh} {
		if got := r.expireBuilds(finNewer+100, 100); !slices.Equal(got, []string{newer}) {
			t.Fatalf("expired %v, want [%s]", got, newer)
		}
		if _, ok := r.s.Build(open); !ok {
			t.Fatal("an unfinished build was expired")
		}
	}
	wantBlobs := []string{digestOf("shared"), digestOf("src-newer")}
	slices.Sort(wantBlobs)
	if len(removed) != 2 || !slices.Equal(removed[1].Blobs, wantBlobs) {
		t.Fatalf("second hook call %+v", removed)
	}
}

func TestExpireBuildsIsBounded(t *testing.T) {
	h := newHarness(t)
	for i := range 1002 {
		id := h.submitRetained("b"+strconv.Itoa(i), 0, "")
		h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: id, TimeUnixMs: h.now})
	}
	now := h.now + 10
	if first := h.expireBuilds(now, 1); len(first) != state.MaxExpiredBuildsPerCommand || first[0] != "1" {
		t.Fatalf("first command deleted %d builds", len(first))
	}
	if got := h.expireBuilds(now, 1); !slices.Equal(got, []string{"1001", "1002"}) {
		t.Fatalf("second command deleted %v", got)
	}
	if bs := h.s.ListBuilds(0); len(bs) != 0 {
		t.Fatalf("%d builds left", len(bs))
	}
}

// finishedBuilds restores into a new store n finished builds numbered
// from first, each with one job, one 64-byte log chunk and its request
// id, finished at finishedMs: a big state without 2n commands.
func finishedBuilds(t *testing.T, first, n int, finishedMs int64) *harness {
	t.Helper()
	var recs []*fsmv1.SnapshotRecord
	recs = append(recs, &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Meta{Meta: &fsmv1.SnapshotMeta{
		Version: state.SnapshotVersion, NextBuildNumber: uint64(first + n), LastIndex: 1}}})
	for i := first; i < first+n; i++ {
		id := strconv.Itoa(i)
		rid := "req-" + id
		recs = append(recs,
			&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Request{Request: &fsmv1.RequestRecord{RequestId: rid, BuildId: id}}},
			&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Build{Build: &kilnv1.Build{Id: id, Name: "build " + id, RequestId: rid,
				State: kilnv1.BuildState_BUILD_STATE_PASSED, CreatedUnixMs: finishedMs - 10, FinishedUnixMs: finishedMs}}},
			&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Job{Job: &kilnv1.Job{Id: id + ".a", BuildId: id, Key: "a",
				State: kilnv1.JobState_JOB_STATE_PASSED, Attempt: 1, LogSeq: 1, FinishedUnixMs: finishedMs, Spec: step("a", 0, nil)}}},
			&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Log{Log: &kilnv1.LogChunk{JobId: id + ".a", Attempt: 1, Seq: 1,
				Data: bytes.Repeat([]byte("x"), 64)}}})
	}
	s := state.New()
	err := s.Restore(func() (*fsmv1.SnapshotRecord, error) {
		if len(recs) == 0 {
			return nil, io.EOF
		}
		r := recs[0]
		recs = recs[1:]
		return r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, f: New(s, nil), s: s, idx: 1, now: finishedMs}
}

// TestSnapshotAfterExpiryIsTheLiveSize: once the old builds are deleted
// (by ExpireBuilds commands of 1000 each), a snapshot is as small as one
// of a store that only ever held the builds still kept. 5 000 builds by
// default to stay fast; KILN_EXPIRE_BUILDS=100000 runs the 100k case of
// the issue (about 13 s of CPU).
func TestSnapshotAfterExpiryIsTheLiveSize(t *testing.T) {
	total, live := 5_000, 100
	if v := os.Getenv("KILN_EXPIRE_BUILDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 || n%1000 != 0 {
			t.Fatalf("KILN_EXPIRE_BUILDS=%q: want a multiple of 1000", v)
		}
		total = n
	}
	const oldMs, liveMs = 1_000, 10_000_000
	h := finishedBuilds(t, 1, total, oldMs)
	// The live builds, finished later, go in through the FSM.
	for i := range live {
		id := h.submitRetained("live"+strconv.Itoa(i), 0, "")
		h.now = liveMs
		h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: id, TimeUnixMs: h.now})
	}
	full := len(snapshotBytes(t, h.f))
	deleted, commands := 0, 0
	for {
		got := h.expireBuilds(liveMs-1, 1_000)
		if len(got) == 0 {
			break
		}
		deleted += len(got)
		commands++
	}
	after := len(snapshotBytes(t, h.f))

	ref := newHarness(t)
	for i := range live {
		id := ref.submitRetained("live"+strconv.Itoa(i), 0, "")
		ref.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: id, TimeUnixMs: liveMs})
	}
	want := len(snapshotBytes(t, ref.f))
	t.Logf("snapshot: %d bytes with %d builds; %d bytes after %d commands deleted %d; %d bytes for the live set alone",
		full, total+live, after, commands, deleted, want)
	if deleted != total || commands != total/state.MaxExpiredBuildsPerCommand || len(h.s.ListBuilds(0)) != live {
		t.Fatalf("deleted %d builds in %d commands, %d left", deleted, commands, len(h.s.ListBuilds(0)))
	}
	// The kept builds' ids are 100001.. instead of 1..: a few bytes more
	// in each of their id fields, nothing of the deleted builds.
	if after > want+live*64 {
		t.Fatalf("snapshot after expiry is %d bytes, the live set alone %d", after, want)
	}
}
