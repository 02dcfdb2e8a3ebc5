package stats

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// The history is laid out in minutes after t0; every figure below was
// worked out by hand from it (see the comments).
var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC).UnixMilli()

func at(min float64) int64 {
	if min < 0 {
		return 0
	}
	return t0 + int64(min*60_000)
}

const minute = int64(60_000)

type jobSpec struct {
	key                       string
	stage                     int32
	state                     kilnv1.JobState
	queued, started, finished float64 // minutes; -1: not set
	production                bool
}

func build(id, repo, name, commit string, state kilnv1.BuildState, created, started, finished float64, jobs ...jobSpec) *kilnv1.Build {
	b := &kilnv1.Build{Id: id, Name: name, State: state, CreatedUnixMs: at(created), StartedUnixMs: at(started), FinishedUnixMs: at(finished),
		Source: &kilnv1.Source{Repo: repo, Commit: commit}}
	for _, j := range jobs {
		attempt := uint32(0)
		if j.started >= 0 {
			attempt = 1
		}
		b.Jobs = append(b.Jobs, &kilnv1.Job{Id: id + "." + j.key, BuildId: id, Key: j.key, Stage: j.stage, State: j.state, Attempt: attempt,
			QueuedUnixMs: at(j.queued), StartedUnixMs: at(j.started), FinishedUnixMs: at(j.finished),
			Spec: &kilnv1.StepSpec{Key: j.key, Stage: j.stage, Production: j.production}})
	}
	return b
}

const (
	passed   = kilnv1.JobState_JOB_STATE_PASSED
	failed   = kilnv1.JobState_JOB_STATE_FAILED
	canceled = kilnv1.JobState_JOB_STATE_CANCELED
	running  = kilnv1.JobState_JOB_STATE_RUNNING
)

// history: pipeline "app" (repo app) builds 1-5 with stages compile →
// test → deploy (production); pipeline "lib" build 6.
func history() []*kilnv1.Build {
	return []*kilnv1.Build{
		build("1", "app", "app", "c1", kilnv1.BuildState_BUILD_STATE_PASSED, 0, 1, 11,
			jobSpec{"compile", 0, passed, 0, 1, 4, false},
			jobSpec{"test", 1, passed, 4, 5, 8, false},
			jobSpec{"deploy", 2, passed, 8, 9, 11, true}),
		build("2", "app", "app", "c2", kilnv1.BuildState_BUILD_STATE_FAILED, 20, 22, 30,
			jobSpec{"compile", 0, passed, 20, 22, 25, false},
			jobSpec{"test", 1, passed, 25, 25, 28, false},
			jobSpec{"deploy", 2, failed, 28, 28, 30, true}),
		build("3", "app", "app", "c3", kilnv1.BuildState_BUILD_STATE_PASSED, 40, 40, 50,
			jobSpec{"compile", 0, passed, 40, 40, 42, false},
			jobSpec{"test", 1, passed, 42, 43, 46, false},
			jobSpec{"deploy", 2, passed, 46, 47, 50, true}),
		build("4", "app", "app", "c4", kilnv1.BuildState_BUILD_STATE_CANCELED, 60, -1, 61,
			jobSpec{"compile", 0, canceled, 60, -1, 61, false},
			jobSpec{"deploy", 2, kilnv1.JobState_JOB_STATE_SKIPPED, -1, -1, 61, true}),
		build("5", "app", "app", "c5", kilnv1.BuildState_BUILD_STATE_RUNNING, 70, 71, -1,
			jobSpec{"compile", 0, running, 70, 71, -1, false}),
		build("6", "lib", "lib", "l1", kilnv1.BuildState_BUILD_STATE_PASSED, 5, 6, 8,
			jobSpec{"build", 0, passed, 5, 6, 8, false}),
	}
}

func d(count int32, avgMin, p90Min float64) *kilnv1.DurationStats {
	return &kilnv1.DurationStats{Count: count, AvgMs: int64(avgMin * float64(minute)), P90Ms: int64(p90Min * float64(minute))}
}

func TestComputeMatchesHandFigures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter Filter
		want   *kilnv1.DeliveryStats
	}{{
		name: "all history",
		want: &kilnv1.DeliveryStats{
			Builds: 6, Passed: 3, Failed: 1, Canceled: 1, Unfinished: 1,
			// Passed and failed builds: 10, 8, 10 (app) and 2 (lib) minutes.
			// Mean 30/4 = 7.5; nearest rank ceil(3.6) = 4th of 2,8,10,10.
			BuildTime: d(4, 7.5, 10),
			// Waits (min): b1 1,1,1; b2 2,0,0; b3 0,1,1; b5 1; b6 1 (b4's
			// job never started). 11 waits, 9 minutes: 540000/11 ms
			// rounded down; the 10th of 0,0,0,1×7,2 is 1.
			QueueWait: &kilnv1.DurationStats{Count: 11, AvgMs: 540000 / 11, P90Ms: minute},
			Stages: []*kilnv1.StageStats{
				// compile/build ran 3,3,2 (app) and 2 (lib); all at offset 0.
				{Stage: 0, Steps: []string{"build", "compile"}, Duration: d(4, 2.5, 3), FromBuildStart: d(4, 0, 0)},
				// test ran 3,3,3 at offsets 4,3,3: mean 10/3 min = 200000 ms.
				{Stage: 1, Steps: []string{"test"}, Duration: d(3, 3, 3), FromBuildStart: &kilnv1.DurationStats{Count: 3, AvgMs: 200000, P90Ms: 4 * minute}},
				// deploy ran 2,2,3 (mean 7/3 min = 140000 ms) at offsets 8,6,7.
				{Stage: 2, Steps: []string{"deploy"}, Duration: &kilnv1.DurationStats{Count: 3, AvgMs: 140000, P90Ms: 3 * minute}, FromBuildStart: d(3, 7, 8)},
			},
			// Production: b1 passed at 11, b2 failed at 30, b3 passed at 50;
			// b4's skipped deploy is neither.
			Deployments: 2, FailedDeployments: 1, Changes: 2,
			// Lead times: 11-0 = 11 and 50-40 = 10 minutes.
			LeadTime:          d(2, 10.5, 11),
			ChangeFailureRate: 1.0 / 3,
			// Failed at 30, restored at 50.
			TimeToRestore: d(1, 20, 20),
		},
	}, {
		name:   "one repository",
		filter: Filter{Repo: "app"},
		want: &kilnv1.DeliveryStats{
			Builds: 5, Passed: 2, Failed: 1, Canceled: 1, Unfinished: 1,
			// 10, 8, 10: mean 28/3 min = 560000 ms; 3rd is 10.
			BuildTime: &kilnv1.DurationStats{Count: 3, AvgMs: 560000, P90Ms: 10 * minute},
			// b1 1,1,1; b2 2,0,0; b3 0,1,1; b5 1 → 10 waits, 8 minutes; 9th of
			// 0,0,0,1×6,2 is 1.
			QueueWait: d(10, 0.8, 1),
			Stages: []*kilnv1.StageStats{
				{Stage: 0, Steps: []string{"compile"}, Duration: &kilnv1.DurationStats{Count: 3, AvgMs: 8 * minute / 3, P90Ms: 3 * minute}, FromBuildStart: d(3, 0, 0)},
				{Stage: 1, Steps: []string{"test"}, Duration: d(3, 3, 3), FromBuildStart: &kilnv1.DurationStats{Count: 3, AvgMs: 200000, P90Ms: 4 * minute}},
				{Stage: 2, Steps: []string{"deploy"}, Duration: &kilnv1.DurationStats{Count: 3, AvgMs: 140000, P90Ms: 3 * minute}, FromBuildStart: d(3, 7, 8)},
			},
			Deployments: 2, FailedDeployments: 1, Changes: 2,
			LeadTime: d(2, 10.5, 11), ChangeFailureRate: 1.0 / 3, TimeToRestore: d(1, 20, 20),
		},
	}, {
		name: "since minute 20, pipeline app",
		// Builds 2-5; b6 (lib) and b1 (minute 0) are out.
		filter: Filter{Pipeline: "app", From: at(20)},
		want: &kilnv1.DeliveryStats{
			FromUnixMs: at(20),
			Builds:     4, Passed: 1, Failed: 1, Canceled: 1, Unfinished: 1,
			BuildTime: d(2, 9, 10),
			// b2 2,0,0; b3 0,1,1; b5 1 → 7 waits, 5 minutes: 300000/7 ms;
			// 7th of 0,0,0,1,1,1,2 is 2.
			QueueWait: &kilnv1.DurationStats{Count: 7, AvgMs: 300000 / 7, P90Ms: 2 * minute},
			Stages: []*kilnv1.StageStats{
				{Stage: 0, Steps: []string{"compile"}, Duration: d(2, 2.5, 3), FromBuildStart: d(2, 0, 0)},
				{Stage: 1, Steps: []string{"test"}, Duration: d(2, 3, 3), FromBuildStart: d(2, 3, 3)},
				{Stage: 2, Steps: []string{"deploy"}, Duration: d(2, 2.5, 3), FromBuildStart: d(2, 6.5, 7)},
			},
			// Only b3 deployed (lead 10); b2's failure is restored by b3.
			Deployments: 1, FailedDeployments: 1, Changes: 1,
			LeadTime: d(1, 10, 10), ChangeFailureRate: 0.5, TimeToRestore: d(1, 20, 20),
		},
	}, {
		name:   "nothing matches",
		filter: Filter{Repo: "nope"},
		want: &kilnv1.DeliveryStats{BuildTime: d(0, 0, 0), QueueWait: d(0, 0, 0), LeadTime: d(0, 0, 0),
			TimeToRestore: d(0, 0, 0)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want.ToUnixMs == 0 {
				tc.want.ToUnixMs = tc.filter.To
			}
			got := Compute(history(), tc.filter)
			if !proto.Equal(got, tc.want) {
				t.Fatalf("got\n%s\nwant\n%s", protojson.Format(got), protojson.Format(tc.want))
			}
		})
	}
}

// TestTimeToRestore: per pipeline, an incident opens at the first failure
// after a success and closes at the next success; a pipeline whose last
// deployment failed is unrestored.
func TestTimeToRestore(t *testing.T) {
	deploy := func(id, name string, state kilnv1.JobState, fin float64) *kilnv1.Build {
		bs := kilnv1.BuildState_BUILD_STATE_PASSED
		if state != passed {
			bs = kilnv1.BuildState_BUILD_STATE_FAILED
		}
		return build(id, "r", name, "c"+id, bs, fin-1, fin-1, fin, jobSpec{"ship", 0, state, fin - 1, fin - 1, fin, true})
	}
	builds := []*kilnv1.Build{
		deploy("1", "web", failed, 10),
		deploy("2", "web", kilnv1.JobState_JOB_STATE_TIMED_OUT, 20),
		deploy("3", "api", passed, 15), // another pipeline: does not restore web
		deploy("4", "web", passed, 35), // restores the incident opened at 10: 25 min
		deploy("5", "web", passed, 36),
		deploy("6", "web", kilnv1.JobState_JOB_STATE_LOST, 40), // open at the end
		deploy("7", "api", failed, 41),
		deploy("8", "api", passed, 44), // 3 min
	}
	got := Compute(builds, Filter{})
	if got.GetDeployments() != 4 || got.GetFailedDeployments() != 4 || got.GetChangeFailureRate() != 0.5 || got.GetChanges() != 4 {
		t.Fatalf("deployments %d failed %d rate %v changes %d", got.GetDeployments(), got.GetFailedDeployments(), got.GetChangeFailureRate(), got.GetChanges())
	}
	if want := d(2, 14, 25); !proto.Equal(got.GetTimeToRestore(), want) || got.GetUnrestored() != 1 {
		t.Fatalf("time to restore %v unrestored %d, want %v and 1", got.GetTimeToRestore(), got.GetUnrestored(), want)
	}
}

// TestChangesCountDistinctCommits: two deployments of one commit are one
// change; a build without a commit is its own change.
func TestChangesCountDistinctCommits(t *testing.T) {
	mk := func(id, commit string) *kilnv1.Build {
		return build(id, "r", "p", commit, kilnv1.BuildState_BUILD_STATE_PASSED, 0, 0, 1, jobSpec{"ship", 0, passed, 0, 0, 1, true})
	}
	got := Compute([]*kilnv1.Build{mk("1", "abc"), mk("2", "abc"), mk("3", ""), mk("4", "")}, Filter{})
	if got.GetDeployments() != 4 || got.GetChanges() != 3 {
		t.Fatalf("deployments %d changes %d, want 4 and 3", got.GetDeployments(), got.GetChanges())
	}
}

func TestNearestRankPercentile(t *testing.T) {
	for _, tc := range []struct {
		in       []int64
		avg, p90 int64
	}{
		{[]int64{5}, 5, 5},
		{[]int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 5, 9},
		{[]int64{10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100}, 14, 10},
	} {
		got := summarize(tc.in)
		if got.GetAvgMs() != tc.avg || got.GetP90Ms() != tc.p90 || int(got.GetCount()) != len(tc.in) {
			t.Errorf("summarize(%v) = %v, want avg %d p90 %d", tc.in, got, tc.avg, tc.p90)
		}
	}
}

func TestDeployStepsToProductionCount(t *testing.T) {
	for _, tc := range []struct {
		spec *kilnv1.StepSpec
		want bool
	}{
		{&kilnv1.StepSpec{Production: true}, true},
		{&kilnv1.StepSpec{Deploy: &kilnv1.DeploySpec{Environment: "production"}}, true},
		{&kilnv1.StepSpec{Deploy: &kilnv1.DeploySpec{Environment: "Production"}}, true},
		{&kilnv1.StepSpec{Deploy: &kilnv1.DeploySpec{Environment: "staging"}}, false},
		{&kilnv1.StepSpec{PinAgent: "h1"}, false}, // a deploy step's host action
		{&kilnv1.StepSpec{}, false},
	} {
		if got := IsProductionDeploy(tc.spec); got != tc.want {
			t.Errorf("IsProductionDeploy(%v) = %v", tc.spec, got)
		}
	}
}
