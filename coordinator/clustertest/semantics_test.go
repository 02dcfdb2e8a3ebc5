package clustertest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func jobsByKey(b *kilnv1.Build) map[string]*kilnv1.Job {
	out := map[string]*kilnv1.Job{}
	for _, j := range b.GetJobs() {
		out[j.GetKey()] = j
	}
	return out
}

// TestParallelStepsRunConcurrentlyOnTwoAgents proves concurrency directly:
// each step waits (bounded) for the other's marker file, so both pass only
// if they overlap in time.
func TestParallelStepsRunConcurrentlyOnTwoAgents(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", map[string]string{"pool": "p"}, 1)
	c.StartAgent("a2", map[string]string{"pool": "p"}, 1)
	dir := t.TempDir()
	wait := func(me, other string) string {
		return fmt.Sprintf(`touch %s; for i in $(seq 1 200); do [ -e %s ] && exit 0; sleep 0.05; done; echo "%s never appeared"; exit 1`,
			filepath.Join(dir, me), filepath.Join(dir, other), other)
	}
	spec := fmt.Sprintf(`agents: {pool: p}
steps:
  - key: left
    commands: [%q]
  - key: right
    commands: [%q]
`, wait("left", "right"), wait("right", "left"))
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "par.yaml"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	jobs := jobsByKey(done)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s: %s", done.GetState(), done.GetReason())
	}
	if jobs["left"].GetAgent() == jobs["right"].GetAgent() {
		t.Fatalf("both steps ran on %s", jobs["left"].GetAgent())
	}
}

// TestPipelineSemanticsEndToEnd runs DAG order, matrix expansion, if-skips,
// allow_failure and failure retries through the real API and agents.
func TestPipelineSemanticsEndToEnd(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 4)
	dir := t.TempDir()
	counter := filepath.Join(dir, "flaky-runs")
	spec := fmt.Sprintf(`name: semantics
stages:
  - name: build
    steps:
      - key: compile
        commands: ["echo compiled"]
  - name: test
    steps:
      - key: unit
        matrix: {go: ["1.22", "1.23"]}
        commands: ["echo unit on go $GO"]
      - key: lint
        needs: []
        allow_failure: true
        commands: ["exit 5"]
      - key: flaky
        needs: [compile]
        retry: {on_failure: 2}
        commands: ["echo x >> %s", "[ $(wc -l < %s) -ge 3 ]"]
  - name: release
    steps:
      - key: only-main
        if: 'branch == "main"'
        commands: ["echo released"]
      - key: after
        needs: [unit, only-main]
        commands: ["echo after"]
`, counter, counter)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "sem.yaml", Branch: "feature"})
	done := waitBuild(t, c, b.GetId(), 60*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s: %s", done.GetState(), done.GetReason())
	}
	jobs := jobsByKey(done)
	var keys []string
	for k := range jobs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if got := strings.Join(keys, ","); got != "after,compile,flaky,lint,only-main,unit-1.22,unit-1.23" {
		t.Fatalf("jobs %s", got)
	}
	if got := jobLog(c.Nodes[0], jobs["unit-1.23"]); got != "unit on go 1.23\n" {
		t.Fatalf("matrix env: log %q", got)
	}
	if j := jobs["lint"]; j.GetState() != kilnv1.JobState_JOB_STATE_FAILED || j.GetExitCode() != 5 {
		t.Fatalf("allow_failure step %s exit %d", j.GetState(), j.GetExitCode())
	}
	if j := jobs["only-main"]; j.GetState() != kilnv1.JobState_JOB_STATE_SKIPPED || !strings.Contains(j.GetReason(), "false") {
		t.Fatalf("if-skip %s %q", j.GetState(), j.GetReason())
	}
	if j := jobs["flaky"]; j.GetState() != kilnv1.JobState_JOB_STATE_PASSED || j.GetAttempt() != 3 {
		t.Fatalf("flaky step %s after %d attempts, want passed on attempt 3", j.GetState(), j.GetAttempt())
	}
	// DAG order: after waited for both matrix legs; unit waited for compile.
	for _, k := range []string{"unit-1.22", "unit-1.23"} {
		if jobs["after"].GetStartedUnixMs() < jobs[k].GetFinishedUnixMs() {
			t.Fatalf("after started before %s finished", k)
		}
		if jobs[k].GetStartedUnixMs() < jobs["compile"].GetFinishedUnixMs() {
			t.Fatalf("%s started before compile finished", k)
		}
	}
}

// TestConcurrencyGroupRunsOneBuildAtATime holds the second build of a group
// with limit 1 until the first finishes.
func TestConcurrencyGroupRunsOneBuildAtATime(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 4)
	gate := filepath.Join(t.TempDir(), "open")
	spec := fmt.Sprintf("concurrency: {group: prod, limit: 1}\nsteps:\n  - key: deploy\n    commands: [\"while [ ! -e %s ]; do sleep 0.02; done\"]\n", gate)
	first := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "d.yaml"})
	second := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), SpecYaml: spec, SpecFilename: "d.yaml"})
	Eventually(t, 10*time.Second, func() bool {
		j, _ := c.Nodes[0].C.Store().Job(first.GetJobs()[0].GetId())
		return j.GetState() == kilnv1.JobState_JOB_STATE_RUNNING
	}, "first deploy runs")
	if b, _ := c.Nodes[0].C.Store().Build(second.GetId()); !b.GetHeld() || b.GetJobs()[0].GetState() != kilnv1.JobState_JOB_STATE_WAITING {
		t.Fatalf("second build held=%v job %s while the first runs", b.GetHeld(), b.GetJobs()[0].GetState())
	}
	touch(t, gate)
	for _, id := range []string{first.GetId(), second.GetId()} {
		if b := waitBuild(t, c, id, 20*time.Second); b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("build %s %s", id, b.GetState())
		}
	}
	f, _ := c.Nodes[0].C.Store().Build(first.GetId())
	s, _ := c.Nodes[0].C.Store().Build(second.GetId())
	if s.GetJobs()[0].GetStartedUnixMs() < f.GetJobs()[0].GetFinishedUnixMs() {
		t.Fatal("the second deploy started before the first finished")
	}
}

// TestBuildspecRunsAsOneJob submits a CodeBuild buildspec through the API.
func TestBuildspecRunsAsOneJob(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	spec := `version: 0.2
env:
  variables:
    GREETING: hi
phases:
  pre_build:
    commands:
      - mkdir out && cd out
  build:
    commands:
      - echo "$GREETING from $(basename $(pwd))"
      - exit 3
    finally:
      - echo cleanup
  post_build:
    commands:
      - echo post_build ran
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "buildspec.yml"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	j := done.GetJobs()[0]
	log := jobLog(c.Nodes[0], j)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || j.GetKey() != "buildspec" {
		t.Fatalf("build %s job %s; log:\n%s", done.GetState(), j.GetKey(), log)
	}
	for _, want := range []string{"hi from out\n", "cleanup\n", "post_build ran\n"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log lacks %q:\n%s", want, log)
		}
	}
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}
