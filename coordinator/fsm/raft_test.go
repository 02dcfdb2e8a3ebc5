package fsm

import (
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestThroughRaft drives the FSM through a real single-node raft.Raft: it
// applies commands, takes a snapshot, and restores it into a second node
// started from the same stores.
func TestThroughRaft(t *testing.T) {
	logs := raft.NewInmemStore()
	snaps := raft.NewInmemSnapshotStore()
	conf := raft.DefaultConfig()
	conf.LocalID = "n1"
	conf.Logger = hclog.NewNullLogger()
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond

	start := func() (*raft.Raft, *state.Store, func()) {
		t.Helper()
		addr, trans := raft.NewInmemTransport("n1")
		store := state.New()
		r, err := raft.NewRaft(conf, New(store, nil), logs, logs, snaps, trans)
		if err != nil {
			t.Fatal(err)
		}
		stop := func() {
			if err := r.Shutdown().Error(); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			_ = trans.Close()
		}
		if has, _ := raft.HasExistingState(logs, logs, snaps); !has {
			if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: addr}}}).Error(); err != nil {
				stop()
				t.Fatal(err)
			}
		}
		return r, store, stop
	}
	waitLeader := func(r *raft.Raft) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for r.State() != raft.Leader {
			select {
			case <-r.LeaderCh():
			case <-deadline:
				t.Fatal("no leader")
			}
		}
	}
	apply := func(r *raft.Raft, ct fsmv1.CommandType, msg proto.Message) *Result {
		t.Helper()
		data, err := Encode(ct, msg)
		if err != nil {
			t.Fatal(err)
		}
		f := r.Apply(data, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatalf("apply %s: %v", ct, err)
		}
		res, ok := f.Response().(*Result)
		if !ok {
			t.Fatalf("response %T", f.Response())
		}
		return res
	}

	r, store, stop := start()
	waitLeader(r)
	res := apply(r, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: "req", Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}}}, TimeUnixMs: 1,
	})
	if res.Err != nil || res.Build.GetId() != "1" {
		stop()
		t.Fatalf("submit: %v %v", res.Err, res.Build)
	}
	if res := apply(r, fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "ag"}); res.Err != nil {
		stop()
		t.Fatal(res.Err)
	}
	// A rejection travels back as Result.Err.
	if res := apply(r, fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: "1.a", Attempt: 2, Agent: "ag"}); res.Err == nil {
		stop()
		t.Fatal("second assign accepted")
	}
	j, _ := store.Job("1.a")
	if j.GetState() != kilnv1.JobState_JOB_STATE_ASSIGNED || j.GetQueueIndex() == 0 {
		stop()
		t.Fatalf("job %v", j)
	}
	if store.LastIndex() != r.AppliedIndex() {
		stop()
		t.Fatalf("last index %d, raft applied %d", store.LastIndex(), r.AppliedIndex())
	}
	if err := r.Snapshot().Error(); err != nil {
		stop()
		t.Fatal(err)
	}
	// One more command after the snapshot, replayed from the log on restart.
	apply(r, fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{JobId: "1.a", Attempt: 1, Agent: "ag", TimeUnixMs: 2})
	want := records(t, store)
	stop()

	// Restart on the same stores: raft restores the snapshot into a fresh
	// store and replays the rest of the log.
	r2, store2, stop2 := start()
	defer stop2()
	waitLeader(r2)
	if err := r2.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	equalList(t, "records", want, records(t, store2))
	if j, _ := store2.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job after restart %v", j)
	}
}
