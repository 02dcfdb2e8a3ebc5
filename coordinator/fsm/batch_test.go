package fsm

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// mixedHarness is busyHarness plus rejected commands of every kind between
// accepted ones: stale reports, a finish ahead of its log, unknown builds
// and jobs, a repeated request id, a cancel of running jobs.
func mixedHarness(t *testing.T) *harness {
	h := busyHarness(t)
	h.assign("nope.x", 1, "a1")                                                                            // not found
	h.assign("2.x", 1, "")                                                                                 // no agent
	h.assign("2.x", 2, "a2")                                                                               // wrong attempt
	h.assign("2.x", 1, "a2")                                                                               // ok
	h.start("2.x", 1, "a1")                                                                                // stale: other agent
	h.logs("a2", "2.x", 1, 1, 3)                                                                           // gap: 3 dropped
	h.finish("2.x", 1, "a2", passed, 3)                                                                    // logs incomplete
	h.logs("a2", "2.x", 1, 2, 3)                                                                           // ok
	h.finish("2.x", 1, "a2", passed, 3)                                                                    // ok
	h.finish("2.x", 1, "a2", passed, 3)                                                                    // stale: finished
	h.artifacts("a1", "1.z", 1, "../escape")                                                               // invalid path
	h.submit("r2", step("x", 0, nil))                                                                      // repeated request id
	h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "bad", Steps: nil}) // invalid
	h.submit("r4", step("p", 0, nil), step("q", 0, &kilnv1.RetryPolicy{OnAgentLost: 1}))
	h.assign("4.p", 1, "a1")
	h.assign("4.q", 1, "a2")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "a2", TimeUnixMs: h.now})
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "4", TimeUnixMs: h.now})
	h.apply(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "99", TimeUnixMs: h.now}) // not found
	h.assign("1.z", 1, "a1")                                                                                   // not queued
	h.finish("1.z", 1, "a1", passed, 3)                                                                        // ok
	h.start("1.z", 1, "a1")                                                                                    // stale: finished
	h.ok(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{Id: "n2", GrpcAddr: "g2", RaftAddr: "r2"})
	return h
}

// sameResult fails unless a batched result equals the one-by-one result.
func sameResult(t *testing.T, i int, a, b *Result) {
	t.Helper()
	if (a.Err == nil) != (b.Err == nil) || (a.Err != nil && a.Err.Error() != b.Err.Error()) {
		t.Fatalf("entry %d: error %v vs %v", i, a.Err, b.Err)
	}
	if !proto.Equal(a.Build, b.Build) || !proto.Equal(a.Repo, b.Repo) {
		t.Fatalf("entry %d: build/repo %v vs %v", i, a.Build, b.Build)
	}
	if !reflect.DeepEqual(a.Outcomes, b.Outcomes) || !reflect.DeepEqual(a.Agents, b.Agents) || !reflect.DeepEqual(a.Expired, b.Expired) {
		t.Fatalf("entry %d: outcomes %+v/%v/%v vs %+v/%v/%v", i, a.Outcomes, a.Agents, a.Expired, b.Outcomes, b.Agents, b.Expired)
	}
	if len(a.Canceled) != len(b.Canceled) {
		t.Fatalf("entry %d: canceled %v vs %v", i, a.Canceled, b.Canceled)
	}
	for k := range a.Canceled {
		if !proto.Equal(a.Canceled[k], b.Canceled[k]) {
			t.Fatalf("entry %d: canceled %v vs %v", i, a.Canceled, b.Canceled)
		}
	}
}

// TestApplyBatchEqualsOneByOne replays a history with rejections through
// ApplyBatch cut into batches of every size, and checks each command's
// result and the final state against applying the entries one by one.
func TestApplyBatchEqualsOneByOne(t *testing.T) {
	h := mixedHarness(t)
	rejected := 0
	for _, r := range h.results {
		if r.Err != nil {
			rejected++
		}
	}
	if rejected < 10 {
		t.Fatalf("history has %d rejections, want many", rejected)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	cuts := map[string]func() int{
		"all":    func() int { return len(h.entries) },
		"one":    func() int { return 1 },
		"two":    func() int { return 2 },
		"random": func() int { return 1 + rng.IntN(9) },
	}
	for name, size := range cuts {
		t.Run(name, func(t *testing.T) {
			s := state.New()
			f := New(s, nil)
			for i := 0; i < len(h.entries); {
				n := min(size(), len(h.entries)-i)
				out := f.ApplyBatch(h.entries[i : i+n])
				if len(out) != n {
					t.Fatalf("ApplyBatch returned %d results for %d entries", len(out), n)
				}
				for k, r := range out {
					res, ok := r.(*Result)
					if !ok || res == nil {
						t.Fatalf("entry %d: no *Result", i+k)
					}
					sameResult(t, i+k, h.results[i+k], res)
				}
				if s.LastIndex() != h.entries[i+n-1].Index {
					t.Fatalf("last index %d after a batch ending at %d", s.LastIndex(), h.entries[i+n-1].Index)
				}
				i += n
			}
			sameState(t, h.s, s)
		})
	}
}

// TestApplyBatchSkipsNonCommands: a BatchingFSM also gets configuration
// entries; they are not the store's and get a nil result.
func TestApplyBatchSkipsNonCommands(t *testing.T) {
	h := newHarness(t)
	h.register("a1", "s1")
	s := state.New()
	f := New(s, nil)
	logs := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte("not a command")},
		h.entries[0],
	}
	logs[1] = &raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: h.entries[0].Data}
	out := f.ApplyBatch(logs)
	if out[0] != nil {
		t.Fatalf("configuration entry result %v, want nil", out[0])
	}
	if res, ok := out[1].(*Result); !ok || res.Err != nil {
		t.Fatalf("command result %v", out[1])
	}
	if s.LastIndex() != 2 || len(s.Agents()) != 1 {
		t.Fatalf("last index %d, %d agents", s.LastIndex(), len(s.Agents()))
	}
	// A batch of configuration entries only records nothing.
	f.ApplyBatch([]*raft.Log{{Index: 3, Term: 1, Type: raft.LogConfiguration}})
	if s.LastIndex() != 2 {
		t.Fatalf("last index %d after a configuration-only batch", s.LastIndex())
	}
}

// TestApplyBatchPanicsBeforeApplying: an undecodable entry stops the node
// before any of its batch is applied.
func TestApplyBatchPanicsBeforeApplying(t *testing.T) {
	h := newHarness(t)
	h.register("a1", "s1")
	s := state.New()
	f := New(s, nil)
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
		if s.LastIndex() != 0 || len(s.Agents()) != 0 {
			t.Fatalf("batch partly applied: last index %d", s.LastIndex())
		}
	}()
	f.ApplyBatch([]*raft.Log{h.entries[0], {Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte{250, 1}}})
}
