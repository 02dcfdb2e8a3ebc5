// Package stats computes delivery statistics from the build history: the
// standard metrics of the AWS CI/CD practice paper (number of builds and
// deployments, average build time, time from the first stage to each
// stage, changes reaching production, lead time to production) plus change
// failure rate and time to restore.
//
// Compute is a pure function of the builds it is given (the replicated
// history, read by OpsService.GetStats from the state store), so every
// coordinator gives the same answer and the figures survive failover. The
// history is the builds the state still holds: build retention removes
// old ones.
//
// Definitions (all durations in milliseconds, from the timestamps the
// leader put in the commands):
//
//   - Window: builds created in [From, To); deployments belong to their
//     build's window.
//   - Builds: passed, failed and canceled builds; the rest are unfinished.
//   - Build time: passed and failed builds that started: first job start
//     (Build.started) to the build's finish.
//   - Queue wait: jobs whose current attempt started: queued to started.
//   - Stages (by index): over the builds where a stage ran, its duration
//     (first start to last finish of its jobs) and its offset from the
//     build's start (the first stage starts at 0).
//   - Production deployments: runs of steps marked `production: true`
//     (StepSpec.production) and deploy steps to the environment
//     "production" (see IsProductionDeploy). A passed one is a
//     deployment; a failed, timed out or lost one a failed deployment;
//     canceled and skipped ones are neither.
//   - Changes: distinct source commits (repository or URL + commit) of the
//     builds with a deployment; a build without a commit is one change.
//   - Lead time: the build's creation (the commit's push, for a watched
//     repository: the watcher submits within a poll interval) to the
//     deployment's finish. The commit's author time is not in the state.
//   - Change failure rate: failed deployments / (deployments + failed
//     deployments).
//   - Time to restore: per pipeline (repository or URL + build name), from
//     a failed deployment that follows a passed one (or none) to the next
//     passed deployment. Pipelines whose last production deployment failed
//     count as unrestored.
//   - Averages are rounded down; the 90th percentile is the nearest rank
//     (the ceil(0.9·n)-th smallest value).
package stats

import (
	"maps"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxStageSteps bounds the step keys listed per stage.
const MaxStageSteps = 20

// Filter selects the builds Compute counts.
type Filter struct {
	// Repo is a registered repository name (Source.repo); empty: all.
	Repo string
	// Pipeline is a build name; empty: all.
	Pipeline string
	// From and To bound the builds' creation times (Unix ms): From
	// inclusive, To exclusive; 0 leaves a side open.
	From, To int64
}

// Match reports whether a build (its header is enough) is in the filter.
func (f Filter) Match(b *kilnv1.Build) bool {
	switch {
	case f.Repo != "" && b.GetSource().GetRepo() != f.Repo:
		return false
	case f.Pipeline != "" && b.GetName() != f.Pipeline:
		return false
	case f.From != 0 && b.GetCreatedUnixMs() < f.From:
		return false
	case f.To != 0 && b.GetCreatedUnixMs() >= f.To:
		return false
	}
	return true
}

// IsProductionDeploy reports whether a step's runs are production
// deployments: the step is marked `production: true`, or it is a deploy
// step (`deploy:`) to the environment named production (any case). The
// host action jobs a deploy step creates are not: the step's own job
// carries the deployment's outcome.
func IsProductionDeploy(spec *kilnv1.StepSpec) bool {
	return spec.GetProduction() || strings.EqualFold(spec.GetDeploy().GetEnvironment(), "production")
}

// Compute returns the delivery statistics of the builds (with their jobs)
// that match f. The order of builds does not matter.
func Compute(builds []*kilnv1.Build, f Filter) *kilnv1.DeliveryStats {
	out := &kilnv1.DeliveryStats{FromUnixMs: f.From, ToUnixMs: f.To}
	var buildTimes, waits, leads []int64
	type stageAcc struct {
		dur, offset []int64
		steps       map[string]bool
	}
	stages := map[int32]*stageAcc{}
	var deploys []deployment
	changes := map[string]bool{}

	for _, b := range builds {
		if !f.Match(b) {
			continue
		}
		out.Builds++
		switch b.GetState() {
		case kilnv1.BuildState_BUILD_STATE_PASSED:
			out.Passed++
		case kilnv1.BuildState_BUILD_STATE_FAILED:
			out.Failed++
		case kilnv1.BuildState_BUILD_STATE_CANCELED:
			out.Canceled++
		default:
			out.Unfinished++
		}
		if st := b.GetState(); st == kilnv1.BuildState_BUILD_STATE_PASSED || st == kilnv1.BuildState_BUILD_STATE_FAILED {
			if s, e := b.GetStartedUnixMs(), b.GetFinishedUnixMs(); s > 0 && e >= s {
				buildTimes = append(buildTimes, e-s)
			}
		}
		type span struct{ first, last int64 }
		spans := map[int32]*span{}
		for _, j := range b.GetJobs() {
			if q, s := j.GetQueuedUnixMs(), j.GetStartedUnixMs(); j.GetAttempt() > 0 && q > 0 && s >= q {
				waits = append(waits, s-q)
			}
			if s, e := j.GetStartedUnixMs(), j.GetFinishedUnixMs(); s > 0 && e >= s && lifecycle.JobFinished(j.GetState()) {
				acc := stages[j.GetStage()]
				if acc == nil {
					acc = &stageAcc{steps: map[string]bool{}}
					stages[j.GetStage()] = acc
				}
				acc.steps[j.GetKey()] = true
				sp := spans[j.GetStage()]
				if sp == nil {
					spans[j.GetStage()] = &span{first: s, last: e}
				} else {
					sp.first, sp.last = min(sp.first, s), max(sp.last, e)
				}
			}
			if !IsProductionDeploy(j.GetSpec()) {
				continue
			}
			var ok bool
			switch j.GetState() {
			case kilnv1.JobState_JOB_STATE_PASSED:
				ok = true
			case kilnv1.JobState_JOB_STATE_FAILED, kilnv1.JobState_JOB_STATE_TIMED_OUT, kilnv1.JobState_JOB_STATE_LOST:
			default:
				continue
			}
			deploys = append(deploys, deployment{pipeline: pipelineKey(b), at: j.GetFinishedUnixMs(), build: b.GetId(), job: j.GetId(), ok: ok})
			if ok {
				out.Deployments++
				leads = append(leads, max(0, j.GetFinishedUnixMs()-b.GetCreatedUnixMs()))
				changes[changeKey(b)] = true
			} else {
				out.FailedDeployments++
			}
		}
		for stage, sp := range spans {
			acc := stages[stage]
			acc.dur = append(acc.dur, sp.last-sp.first)
			if bs := b.GetStartedUnixMs(); bs > 0 && sp.first >= bs {
				acc.offset = append(acc.offset, sp.first-bs)
			}
		}
	}
	out.BuildTime = summarize(buildTimes)
	out.QueueWait = summarize(waits)
	out.LeadTime = summarize(leads)
	out.Changes = int32(len(changes))
	if n := out.Deployments + out.FailedDeployments; n > 0 {
		out.ChangeFailureRate = float64(out.FailedDeployments) / float64(n)
	}
	restores, open := restoreTimes(deploys)
	out.TimeToRestore = summarize(restores)
	out.Unrestored = int32(open)
	for _, idx := range slices.Sorted(maps.Keys(stages)) {
		acc := stages[idx]
		steps := slices.Sorted(maps.Keys(acc.steps))
		if len(steps) > MaxStageSteps {
			steps = steps[:MaxStageSteps]
		}
		out.Stages = append(out.Stages, &kilnv1.StageStats{Stage: idx, Steps: steps,
			Duration: summarize(acc.dur), FromBuildStart: summarize(acc.offset)})
	}
	return out
}

// deployment is one production deploy step run that ended passed or
// failed.
type deployment struct {
	pipeline   string
	at         int64
	build, job string
	ok         bool
}

// restoreTimes walks each pipeline's deployments in finish order: a
// failure after a success (or at the start) opens an incident, the next
// success closes it. It returns the closed incidents' durations and how
// many pipelines still have one open.
func restoreTimes(ds []deployment) (restores []int64, open int) {
	sort.SliceStable(ds, func(i, j int) bool {
		a, b := ds[i], ds[j]
		if a.pipeline != b.pipeline {
			return a.pipeline < b.pipeline
		}
		if a.at != b.at {
			return a.at < b.at
		}
		return a.job < b.job
	})
	var failedAt int64
	failing := false
	for i, d := range ds {
		if i > 0 && d.pipeline != ds[i-1].pipeline {
			if failing {
				open++
			}
			failing = false
		}
		switch {
		case !d.ok && !failing:
			failing, failedAt = true, d.at
		case d.ok && failing:
			restores = append(restores, max(0, d.at-failedAt))
			failing = false
		}
	}
	if failing {
		open++
	}
	return restores, open
}

// pipelineKey identifies the pipeline a build runs: repository (or URL)
// and build name.
func pipelineKey(b *kilnv1.Build) string {
	src := b.GetSource().GetRepo()
	if src == "" {
		src = b.GetSource().GetGitUrl()
	}
	return src + "\x00" + b.GetName()
}

// changeKey identifies the change a build deploys: its source commit, or
// the build itself when it has none.
func changeKey(b *kilnv1.Build) string {
	if c := b.GetSource().GetCommit(); c != "" {
		src := b.GetSource().GetRepo()
		if src == "" {
			src = b.GetSource().GetGitUrl()
		}
		return src + "@" + c
	}
	return "build:" + b.GetId()
}

// summarize returns the count, mean (rounded down) and nearest-rank 90th
// percentile of ds.
func summarize(ds []int64) *kilnv1.DurationStats {
	out := &kilnv1.DurationStats{Count: int32(len(ds))}
	if len(ds) == 0 {
		return out
	}
	sorted := slices.Sorted(slices.Values(ds))
	var sum int64
	for _, d := range sorted {
		sum += d
	}
	out.AvgMs = sum / int64(len(sorted))
	rank := int(math.Ceil(0.9 * float64(len(sorted))))
	out.P90Ms = sorted[max(rank, 1)-1]
	return out
}
