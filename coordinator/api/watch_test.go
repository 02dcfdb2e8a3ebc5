package api

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// sink is a server stream that hands every sent message to a channel.
type sink[T any] struct {
	grpc.ServerStream
	ctx context.Context
	out chan *T
}

func newSink[T any](ctx context.Context) *sink[T] {
	return &sink[T]{ctx: ctx, out: make(chan *T, 1024)}
}

func (s *sink[T]) Context() context.Context { return s.ctx }

func (s *sink[T]) Send(m *T) error {
	s.out <- m
	return nil
}

func (s *sink[T]) next(t *testing.T) *T {
	t.Helper()
	select {
	case m := <-s.out:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return nil
	}
}

// watchStore is a store with build 1 (jobs a and b) and build 2 (job a),
// every job assigned to agent x.
func watchStore(t *testing.T) (*state.Store, func(fn func(index uint64) error)) {
	t.Helper()
	s := state.New()
	var index uint64
	apply := func(fn func(index uint64) error) {
		t.Helper()
		index++
		if err := fn(index); err != nil {
			t.Fatal(err)
		}
	}
	apply(func(i uint64) error {
		return s.RegisterAgent(i, &fsmv1.RegisterAgent{Name: "x", Slots: 10, SessionId: "s"})
	})
	for _, keys := range [][]string{{"a", "b"}, {"a"}} {
		var steps []*kilnv1.StepSpec
		for _, k := range keys {
			steps = append(steps, &kilnv1.StepSpec{Key: k, Commands: []string{"true"}})
		}
		var id string
		apply(func(i uint64) error {
			b, err := s.SubmitBuild(i, &fsmv1.SubmitBuild{Steps: steps})
			id = b.GetId()
			return err
		})
		for _, k := range keys {
			apply(func(i uint64) error {
				return s.AssignJob(i, &fsmv1.AssignJob{JobId: id + "." + k, Attempt: 1, Agent: "x"})
			})
		}
	}
	return s, apply
}

func appendChunk(s *state.Store, jobID string, seq uint64) func(uint64) error {
	return func(i uint64) error {
		acks := s.AppendLogs(i, &fsmv1.AppendLogs{Agent: "x", Chunks: []*kilnv1.LogChunk{
			{JobId: jobID, Attempt: 1, Seq: seq, Data: []byte(fmt.Sprintf("%s-%d\n", jobID, seq))},
		}})
		if len(acks) != 1 || acks[0].LogSeq != seq {
			return fmt.Errorf("append %s %d: %v", jobID, seq, acks)
		}
		return nil
	}
}

func finishJob(s *state.Store, jobID string, lastSeq uint64) func(uint64) error {
	return func(i uint64) error {
		_, err := s.FinishJob(i, &fsmv1.FinishJob{Agent: "x", Finished: &kilnv1.JobFinished{
			JobId: jobID, Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: lastSeq,
		}})
		return err
	}
}

// StreamLogs with follow delivers its own job's chunks as they commit, in
// order and once, resumes after the positions given, and ends when the
// job does; WatchBuild sends the current build first, then every change,
// and ends when the build finishes.
func TestFollowStreams(t *testing.T) {
	s, apply := watchStore(t)
	srv := NewControlServer(&Deps{Store: s, Log: zaptest.NewLogger(t)})
	apply(appendChunk(s, "1.a", 1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	logs := newSink[kilnv1.StreamLogsResponse](ctx)
	logsDone := make(chan error, 1)
	go func() {
		logsDone <- srv.StreamLogs(&kilnv1.StreamLogsRequest{Consistency: stale, BuildId: "1", JobKey: "a", Follow: true,
			After: []*kilnv1.LogPosition{{JobKey: "a", Attempt: 1, Seq: 1}}}, logs)
	}()
	watch := newSink[kilnv1.WatchBuildResponse](ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- srv.WatchBuild(&kilnv1.WatchBuildRequest{Consistency: stale, BuildId: "1"}, watch)
	}()

	if b := watch.next(t).GetBuild(); b.GetId() != "1" || b.GetJobs()[0].GetLogSeq() != 1 {
		t.Fatalf("first watch message %v", b)
	}
	for seq := uint64(2); seq <= 5; seq++ {
		apply(appendChunk(s, "2.a", seq-1)) // another build: not in either stream
		apply(appendChunk(s, "1.b", seq-1)) // another job: not in the job's stream
		apply(appendChunk(s, "1.a", seq))
	}
	for seq := uint64(2); seq <= 5; seq++ {
		m := logs.next(t)
		if m.GetJobKey() != "a" || m.GetSeq() != seq || string(m.GetData()) != fmt.Sprintf("1.a-%d\n", seq) {
			t.Fatalf("chunk %v, want seq %d of 1.a", m, seq)
		}
	}
	apply(finishJob(s, "1.a", 5))
	if err := <-logsDone; err != nil {
		t.Fatalf("StreamLogs: %v", err)
	}
	if len(logs.out) != 0 {
		t.Fatalf("extra chunk %v", <-logs.out)
	}
	apply(finishJob(s, "1.b", 4))
	if err := <-watchDone; err != nil {
		t.Fatalf("WatchBuild: %v", err)
	}
	var last *kilnv1.Build
	for len(watch.out) > 0 {
		last = (<-watch.out).GetBuild()
	}
	if last.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("last watch message %v", last)
	}
}

// A client that goes away ends a waiting stream with Canceled.
func TestFollowStreamsEndWithTheClient(t *testing.T) {
	s, _ := watchStore(t)
	srv := NewControlServer(&Deps{Store: s, Log: zaptest.NewLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	watch := newSink[kilnv1.WatchBuildResponse](ctx)
	done := make(chan error, 1)
	go func() { done <- srv.WatchBuild(&kilnv1.WatchBuildRequest{Consistency: stale, BuildId: "2"}, watch) }()
	watch.next(t)
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("WatchBuild after cancel: %v", err)
	}
	logs := newSink[kilnv1.StreamLogsResponse](ctx)
	if err := srv.StreamLogs(&kilnv1.StreamLogsRequest{Consistency: stale, BuildId: "2", Follow: true}, logs); status.Code(err) != codes.Canceled {
		t.Fatalf("StreamLogs after cancel: %v", err)
	}
	if err := srv.StreamLogs(&kilnv1.StreamLogsRequest{Consistency: stale, BuildId: "9"}, logs); status.Code(err) != codes.NotFound {
		t.Fatalf("StreamLogs of a missing build: %v", err)
	}
}

// stale skips the read barrier: these tests have a store but no Raft.
const stale = kilnv1.Consistency_CONSISTENCY_STALE
