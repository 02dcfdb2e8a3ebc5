package retention

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// applier applies commands to a real FSM, as Raft would after a commit.
type applier struct {
	f     *fsm.FSM
	index uint64
	types []fsmv1.CommandType
}

func (a *applier) Apply(_ context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	data, err := fsm.Encode(t, msg)
	if err != nil {
		return nil, err
	}
	a.index++
	a.types = append(a.types, t)
	return a.f.Apply(&raft.Log{Index: a.index, Data: data}).(*fsm.Result), nil
}

// finished submits n one-step builds and cancels them at finishedMs.
func finished(t *testing.T, a *applier, n int, finishedMs int64) {
	t.Helper()
	for i := range n {
		res, _ := a.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
			RequestId: "r" + strconv.Itoa(int(a.index)) + "-" + strconv.Itoa(i), TimeUnixMs: finishedMs,
			Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}}}})
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if res, _ := a.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD,
			&fsmv1.CancelBuild{BuildId: res.Build.GetId(), TimeUnixMs: finishedMs}); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
}

func TestBuildsPassDeletesDueBuildsInBoundedCommands(t *testing.T) {
	store := state.New()
	a := &applier{f: fsm.New(store, nil)}
	finished(t, a, 1200, 1_000)
	finished(t, a, 3, 50_000) // within retention
	now := time.UnixMilli(40_000)
	cfg := Config{Store: store, Raft: a, BuildRetention: 30 * time.Second, Now: func() time.Time { return now }}

	// Build retention 0 keeps everything.
	off := cfg
	off.BuildRetention = 0
	if n := BuildsPass(context.Background(), off); n != 0 {
		t.Fatalf("retention 0 deleted %d builds", n)
	}
	before := len(a.types)
	if n := BuildsPass(context.Background(), cfg); n != 1200 {
		t.Fatalf("deleted %d builds, want 1200", n)
	}
	// 2 commands of at most 1000 builds; the loop stops once none is due.
	var expires int
	for _, ty := range a.types[before:] {
		if ty == fsmv1.CommandType_COMMAND_TYPE_EXPIRE_BUILDS {
			expires++
		}
	}
	if expires != 2 || len(a.types)-before != 2 {
		t.Fatalf("%d ExpireBuilds commands of %d", expires, len(a.types)-before)
	}
	if left := store.ListBuilds(0); len(left) != 3 {
		t.Fatalf("%d builds left, want the 3 within retention", len(left))
	}
	if n := BuildsPass(context.Background(), cfg); n != 0 || len(a.types) != before+2 {
		t.Fatal("a pass with nothing due committed a command")
	}
}
