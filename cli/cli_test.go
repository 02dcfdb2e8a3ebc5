package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runCLI runs kilnctl with args and returns stdout, stderr and the exit
// code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := NewRootCommand(&out, &errb)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := ExitCode(cmd.ExecuteContext(ctx))
	return out.String(), errb.String(), code
}

func must(t *testing.T, code, want int, stderr string) {
	t.Helper()
	if code != want {
		t.Fatalf("exit code %d, want %d; stderr:\n%s", code, want, stderr)
	}
}

func TestRunCommand(t *testing.T) {
	f := newFake()
	addr := f.serve(t)
	t.Setenv("USER", "alice")
	out, errOut, code := runCLI(t, "--coordinators", addr, "run", "--label", "os=linux", "--env", "A=b=c",
		"--job-timeout", "90s", "--name", "smoke", "--", "echo", "-n", "hi")
	must(t, code, 0, errOut)
	if out != "1\n" {
		t.Errorf("stdout = %q, want the build id", out)
	}
	req := f.submits[0]
	if req.Command != "echo -n hi" || req.Labels["os"] != "linux" || req.Env["A"] != "b=c" ||
		req.TimeoutMs != 90000 || req.Name != "smoke" || req.SpecYaml != "" {
		t.Errorf("request = %v", req)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(req.RequestId) {
		t.Errorf("request id %q", req.RequestId)
	}
	if !strings.HasPrefix(req.Submitter, "alice@") {
		t.Errorf("submitter %q", req.Submitter)
	}
	// Flags end at the command: no "--" needed.
	_, errOut, code = runCLI(t, "--coordinators", addr, "run", "ls", "-la")
	must(t, code, 0, errOut)
	if got := f.submits[1].Command; got != "ls -la" {
		t.Errorf("command = %q", got)
	}
	if f.submits[0].RequestId == f.submits[1].RequestId {
		t.Error("two builds share a request id")
	}
}

func TestRunRequestIDReusedAcrossRetries(t *testing.T) {
	ldr := newFake()
	ldr.failFirstSubmit = true
	ldrAddr := ldr.serve(t)
	follower := newFake()
	follower.followerOf = ldrAddr
	out, errOut, code := runCLI(t, "--coordinators", follower.serve(t)+","+ldrAddr, "run", "--", "make")
	must(t, code, 0, errOut)
	if out != "1\n" {
		t.Errorf("stdout = %q", out)
	}
	if len(ldr.submits) != 2 {
		t.Fatalf("leader saw %d submits, want 2 (one failed, one retry)", len(ldr.submits))
	}
	id := follower.submits[0].RequestId
	for _, req := range append(follower.submits, ldr.submits...) {
		if req.RequestId != id {
			t.Errorf("request ids differ across retries: %s and %s", id, req.RequestId)
		}
	}
	if len(ldr.builds) != 1 {
		t.Errorf("%d builds created", len(ldr.builds))
	}
}

func finished(state kilnv1.BuildState) func(*kilnv1.Build) {
	return func(b *kilnv1.Build) {
		b.State = state
		b.StartedUnixMs, b.FinishedUnixMs = 1_700_000_000_000, 1_700_000_065_000
	}
}

func TestRunWaitResumesLogs(t *testing.T) {
	f := newFake()
	f.newBuild = finished(kilnv1.BuildState_BUILD_STATE_PASSED)
	f.logs["1"] = []*kilnv1.StreamLogsResponse{
		chunk("main", 1, 1, "a\n"), chunk("main", 1, 2, "b"), chunk("main", 1, 3, "\nc\n"),
	}
	f.breakAfter = 2
	out, errOut, code := runCLI(t, "--coordinators", f.serve(t), "run", "--wait", "--", "true")
	must(t, code, 0, errOut)
	if out != "a\nb\nc\n" {
		t.Errorf("stdout = %q, want every line exactly once", out)
	}
	if errOut != "build 1 submitted\nbuild 1 passed\n" {
		t.Errorf("stderr = %q", errOut)
	}
	if len(f.streamReqs) != 2 {
		t.Fatalf("%d StreamLogs calls, want 2", len(f.streamReqs))
	}
	after := f.streamReqs[1].After
	if len(after) != 1 || after[0].JobKey != "main" || after[0].Attempt != 1 || after[0].Seq != 2 || !f.streamReqs[1].Follow {
		t.Errorf("resume request = %v", f.streamReqs[1])
	}
}

func TestRunWaitFailed(t *testing.T) {
	f := newFake()
	f.newBuild = finished(kilnv1.BuildState_BUILD_STATE_FAILED)
	f.logs["1"] = []*kilnv1.StreamLogsResponse{chunk("main", 1, 1, "boom")}
	out, errOut, code := runCLI(t, "--coordinators", f.serve(t), "run", "--wait", "--", "false")
	must(t, code, 1, errOut)
	if out != "boom" {
		t.Errorf("stdout = %q (raw bytes expected)", out)
	}
	if errOut != "build 1 submitted\nbuild 1 failed\n" {
		t.Errorf("stderr = %q", errOut)
	}
}

// run --wait follows the build with WatchBuild, not GetBuild polling, and
// reopens a watch that breaks before the build finished.
func TestRunWaitWatchesBuild(t *testing.T) {
	f := newFake()
	f.newBuild = finished(kilnv1.BuildState_BUILD_STATE_FAILED)
	f.watchBreak = 1
	_, errOut, code := runCLI(t, "--coordinators", f.serve(t), "run", "--wait", "--", "false")
	must(t, code, 1, errOut)
	if errOut != "build 1 submitted\nbuild 1 failed\n" {
		t.Errorf("stderr = %q", errOut)
	}
	if f.watchReqs != 2 || f.gets != 0 {
		t.Errorf("%d WatchBuild and %d GetBuild calls, want 2 and 0", f.watchReqs, f.gets)
	}
}

// The leader dies in the middle of run --wait --consistency=stale: the log
// and the watch move to the other coordinator, which first answers as a
// node still catching up would with stale reads (NotFound), and every line
// is printed exactly once.
func TestRunWaitSurvivesLeaderChange(t *testing.T) {
	chunks := []*kilnv1.StreamLogsResponse{chunk("main", 1, 1, "a\n"), chunk("main", 1, 2, "b"), chunk("main", 1, 3, "\nc\n")}
	ldr := newFake()
	ldr.newBuild = finished(kilnv1.BuildState_BUILD_STATE_PASSED)
	ldr.logs["1"] = chunks
	ldr.breakAfter, ldr.downAfterBreak = 2, true
	other := newFake()
	replica := &kilnv1.Build{Id: "1", Jobs: []*kilnv1.Job{{Key: "main"}}}
	finished(kilnv1.BuildState_BUILD_STATE_PASSED)(replica)
	other.addBuild(replica)
	other.logs["1"] = chunks
	other.lagging = 1
	out, errOut, code := runCLI(t, "--coordinators", ldr.serve(t)+","+other.serve(t), "--consistency", "stale", "run", "--wait", "--", "true")
	must(t, code, 0, errOut)
	if out != "a\nb\nc\n" {
		t.Errorf("stdout = %q, want every line exactly once", out)
	}
	if errOut != "build 1 submitted\nbuild 1 passed\n" {
		t.Errorf("stderr = %q", errOut)
	}
	if n := len(other.streamReqs); n != 2 {
		t.Fatalf("the other coordinator got %d StreamLogs calls, want 2 (NotFound, resume)", n)
	}
	if after := other.streamReqs[1].After; len(after) != 1 || after[0].Seq != 2 {
		t.Errorf("resume positions %v", after)
	}
	if other.watchReqs != 1 || ldr.gets+other.gets != 0 {
		t.Errorf("watch calls %d, GetBuild calls %d", other.watchReqs, ldr.gets+other.gets)
	}
}

func TestRunWaitSeveralJobs(t *testing.T) {
	f := newFake()
	f.newBuild = func(b *kilnv1.Build) {
		finished(kilnv1.BuildState_BUILD_STATE_PASSED)(b)
		b.Jobs = []*kilnv1.Job{{Key: "a"}, {Key: "b"}}
	}
	f.logs["1"] = []*kilnv1.StreamLogsResponse{
		chunk("a", 1, 1, "one\ntw"), chunk("b", 1, 1, "x\n"), chunk("a", 2, 1, "again\n"), chunk("b", 1, 2, "tail"),
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "k.yaml")
	spec := "steps:\n  - {key: a, command: x}\n  - {key: b, command: y}\n"
	if err := os.WriteFile(file, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "--coordinators", f.serve(t), "run", "-f", file, "--wait")
	must(t, code, 0, errOut)
	want := "[a] one\n[b] x\n[a] tw\n[a] again\n[b] tail\n"
	if out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "--- job a: attempt 2 ---\n") {
		t.Errorf("stderr lacks the attempt notice: %q", errOut)
	}
	if req := f.submits[0]; req.SpecYaml != spec || req.SpecFilename != file || req.Command != "" {
		t.Errorf("request = %v", req)
	}
}

func TestRunFileInvalid(t *testing.T) {
	f := newFake()
	addr := f.serve(t)
	file := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(file, []byte("steps:\n  - key: a\n    comand: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "--coordinators", addr, "run", "-f", file)
	must(t, code, 2, errOut)
	if out != "" || len(f.submits) != 0 {
		t.Errorf("submitted an invalid file: stdout %q", out)
	}
	if !strings.Contains(errOut, file+`:3:5: unknown key "comand" in step (hint: did you mean "command"?)`) {
		t.Errorf("stderr = %q", errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"run"},
		{"run", "-f", "x.yaml", "--", "make"},
		{"run", "--label", "novalue", "--", "make"},
		{"run", "-f", "/does/not/exist.yaml"},
		{"status"},
		{"status", "1", "-o", "yaml"},
		{"logs", "1", "2"},
		{"bogus"},
		{"cluster", "bogus"},
		{"builds", "--nope"},
		{"validate"},
		{"--coordinators", "etcd:///kiln/coordinators", "--etcd-endpoints", "", "cluster", "status"},
		{"--coordinators", "etcd:///kiln/coordinators", "--etcd-endpoints", "ftp://x:1", "cluster", "status"},
		{"--coordinators", "etcd://host/kiln", "--etcd-endpoints", "127.0.0.1:1", "cluster", "status"},
	} {
		_, errOut, code := runCLI(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.HasPrefix(errOut, "kilnctl: ") {
			t.Errorf("%v: stderr = %q", args, errOut)
		}
	}
}

func sampleBuild() *kilnv1.Build {
	return &kilnv1.Build{Id: "7", Name: "app", State: kilnv1.BuildState_BUILD_STATE_FAILED, Submitter: "bob@h",
		CreatedUnixMs: 1_700_000_000_000, StartedUnixMs: 1_700_000_001_000, FinishedUnixMs: 1_700_000_062_000,
		Reason: "job test timed out",
		Jobs: []*kilnv1.Job{
			{Id: "7.build", Key: "build", State: kilnv1.JobState_JOB_STATE_PASSED, Attempt: 1, Agent: "ag1", LogBytes: 120, LogLines: 3},
			{Id: "7.test", Key: "test", State: kilnv1.JobState_JOB_STATE_TIMED_OUT, Attempt: 2, Agent: "ag2", ExitCode: -1, Reason: "timeout"},
		}}
}

func TestStatusJSON(t *testing.T) {
	f := newFake()
	f.addBuild(sampleBuild())
	out, errOut, code := runCLI(t, "--coordinators", f.serve(t), "status", "7", "-o", "json")
	must(t, code, 0, errOut)
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	want := map[string]any{
		"id": "7", "name": "app", "state": "failed", "submitter": "bob@h",
		"created": "2023-11-14T22:13:20Z", "started": "2023-11-14T22:13:21Z", "finished": "2023-11-14T22:14:22Z",
		"reason": "job test timed out",
		"jobs": []any{
			map[string]any{"id": "7.build", "key": "build", "state": "passed", "attempt": 1.0, "agent": "ag1", "exit_code": 0.0, "reason": "", "log_bytes": 120.0, "log_lines": 3.0},
			map[string]any{"id": "7.test", "key": "test", "state": "timed_out", "attempt": 2.0, "agent": "ag2", "exit_code": -1.0, "reason": "timeout", "log_bytes": 0.0, "log_lines": 0.0},
		},
	}
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Errorf("json:\n got %s\nwant %s", gotJSON, wantJSON)
	}
}

func TestStatusTableAndNotFound(t *testing.T) {
	f := newFake()
	f.addBuild(sampleBuild())
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "status", "7")
	must(t, code, 0, errOut)
	for _, want := range []string{"BUILD      7\n", "STATE      failed\n", "DURATION   1m1s\n", "JOB    STATE", "test   timed_out  2"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "status", "9")
	must(t, code, 1, errOut)
	if errOut != "kilnctl: get build 9: build 9 not found (hint: list builds with 'kilnctl builds')\n" {
		t.Errorf("stderr = %q", errOut)
	}
}

func TestBuilds(t *testing.T) {
	f := newFake()
	f.addBuild(sampleBuild())
	f.addBuild(&kilnv1.Build{Id: "8", Name: "queued one", State: kilnv1.BuildState_BUILD_STATE_QUEUED})
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "builds")
	must(t, code, 0, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^ID\s+NAME\s+SUBMITTER\s+STATE\s+DURATION\s+FINISHED$`).MatchString(lines[0]) ||
		!strings.HasPrefix(lines[1], "8 ") || !strings.Contains(lines[2], "1m1s") {
		t.Errorf("table:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "builds", "--limit", "1", "-o", "json")
	must(t, code, 0, errOut)
	var got []BuildJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 || got[0].ID != "8" || got[0].State != "queued" {
		t.Errorf("json %v: %s", err, out)
	}
	// Five more builds: --limit 4 takes the newest 4 over two pages.
	for i := 9; i <= 13; i++ {
		f.addBuild(&kilnv1.Build{Id: fmt.Sprint(i), Name: fmt.Sprint("b", i), State: kilnv1.BuildState_BUILD_STATE_QUEUED})
	}
	f.pages = 0
	out, errOut, code = runCLI(t, "--coordinators", addr, "builds", "--limit", "4", "-o", "json")
	must(t, code, 0, errOut)
	got = nil
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 4 || got[0].ID != "13" || got[3].ID != "10" || f.pages != 2 {
		t.Errorf("paged list (%d pages) %v: %s", f.pages, err, out)
	}
	// The default 50 follows every page to the oldest.
	out, errOut, code = runCLI(t, "--coordinators", addr, "builds", "-o", "json")
	must(t, code, 0, errOut)
	got = nil
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 7 || got[6].ID != "7" {
		t.Errorf("all pages %v: %s", err, out)
	}
	// An empty list is [] in JSON.
	empty := newFake()
	out, _, _ = runCLI(t, "--coordinators", empty.serve(t), "builds", "-o", "json")
	if out != "[]\n" {
		t.Errorf("empty list = %q", out)
	}
}

func TestLogs(t *testing.T) {
	f := newFake()
	f.addBuild(&kilnv1.Build{Id: "3", State: kilnv1.BuildState_BUILD_STATE_PASSED, Jobs: []*kilnv1.Job{{Key: "a"}, {Key: "b"}}})
	f.logs["3"] = []*kilnv1.StreamLogsResponse{chunk("a", 1, 1, "a1\n"), chunk("a", 1, 2, "a2"), chunk("b", 1, 1, "b1\n")}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "logs", "3")
	must(t, code, 0, errOut)
	if out != "a1\na2b1\n" {
		t.Errorf("logs = %q (concatenated, no prefixes)", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "logs", "3", "--job", "b", "-f")
	must(t, code, 0, errOut)
	if out != "b1\n" {
		t.Errorf("logs --job b = %q", out)
	}
	if req := f.streamReqs[1]; req.JobKey != "b" || !req.Follow {
		t.Errorf("request = %v", req)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "logs", "3", "-f")
	must(t, code, 0, errOut)
	if out != "[a] a1\n[b] b1\n[a] a2\n" {
		t.Errorf("logs -f = %q", out)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "logs", "3", "--job", "zzz")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, `build 3 has no job "zzz" (jobs: a, b)`) {
		t.Errorf("stderr = %q", errOut)
	}
}

// logs -f with several jobs resumes a broken stream without repeating a
// line or losing a job's unfinished one.
func TestLogsFollowResumes(t *testing.T) {
	f := newFake()
	f.addBuild(&kilnv1.Build{Id: "1", State: kilnv1.BuildState_BUILD_STATE_RUNNING, Jobs: []*kilnv1.Job{{Key: "a"}, {Key: "b"}}})
	f.logs["1"] = []*kilnv1.StreamLogsResponse{chunk("a", 1, 1, "x\ny"), chunk("b", 1, 1, "1\n"), chunk("a", 1, 2, "z\n")}
	f.breakAfter = 2
	out, errOut, code := runCLI(t, "--coordinators", f.serve(t), "logs", "1", "-f")
	must(t, code, 0, errOut)
	if out != "[a] x\n[b] 1\n[a] yz\n" {
		t.Errorf("stdout = %q", out)
	}
	if len(f.streamReqs) != 2 || len(f.streamReqs[1].After) != 2 || !f.streamReqs[1].Follow {
		t.Errorf("stream requests %v", f.streamReqs)
	}
}

func TestCancel(t *testing.T) {
	f := newFake()
	f.addBuild(&kilnv1.Build{Id: "1", State: kilnv1.BuildState_BUILD_STATE_RUNNING})
	f.addBuild(&kilnv1.Build{Id: "2", State: kilnv1.BuildState_BUILD_STATE_PASSED})
	addr := f.serve(t)
	for range 2 { // idempotent
		out, errOut, code := runCLI(t, "--coordinators", addr, "cancel", "1", "--reason", "oops")
		must(t, code, 0, errOut)
		if out != "build 1 canceled\n" {
			t.Errorf("stdout = %q", out)
		}
	}
	if f.cancels[0].Reason != "oops" || f.cancels[0].RequestId == "" {
		t.Errorf("request = %v", f.cancels[0])
	}
	_, errOut, code := runCLI(t, "--coordinators", addr, "cancel", "2")
	must(t, code, 1, errOut)
	if errOut != "kilnctl: cancel build 2: the build already passed\n" {
		t.Errorf("stderr = %q", errOut)
	}
}

func TestAgents(t *testing.T) {
	f := newFake()
	f.agents = []*kilnv1.Agent{
		{Name: "ag1", Labels: map[string]string{"os": "linux", "arch": "arm64"}, Slots: 4, Running: 1, State: kilnv1.AgentState_AGENT_STATE_DRAINING, Version: "v1"},
		{Name: "ag2", Slots: 1, State: kilnv1.AgentState_AGENT_STATE_LOST},
	}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "agents", "-o", "json")
	must(t, code, 0, errOut)
	want := `[{"name":"ag1","labels":{"arch":"arm64","os":"linux"},"slots":4,"running":1,"state":"draining","version":"v1"},` +
		`{"name":"ag2","labels":{},"slots":1,"running":0,"state":"lost","version":""}]`
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(out)); err != nil || compact.String() != want {
		t.Errorf("json = %s (%v)\nwant %s", compact.String(), err, want)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "agents")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "arch=arm64,os=linux") || !strings.HasPrefix(out, "NAME") {
		t.Errorf("table:\n%s", out)
	}
}

func TestCluster(t *testing.T) {
	ldr := newFake()
	ldr.status = &kilnv1.StatusResponse{Leader: "n1", LeaderGrpcAddr: "127.0.0.1:7070", NodeId: "n1", Nodes: []*kilnv1.Node{
		{Id: "n1", GrpcAddr: "127.0.0.1:7070", RaftAddr: "127.0.0.1:7080", State: "leader", Voter: true, Healthy: true},
		{Id: "n2", GrpcAddr: "127.0.0.1:7071", RaftAddr: "127.0.0.1:7081", State: "nonvoter", Voter: false},
	}}
	ldrAddr := ldr.serve(t)
	follower := newFake()
	follower.followerOf = ldrAddr
	followerAddr := follower.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", ldrAddr, "cluster", "status", "-o", "json")
	must(t, code, 0, errOut)
	want := `{"leader":"n1","leader_grpc_addr":"127.0.0.1:7070","nodes":[` +
		`{"id":"n1","grpc_addr":"127.0.0.1:7070","raft_addr":"127.0.0.1:7080","state":"leader","voter":true,"healthy":true},` +
		`{"id":"n2","grpc_addr":"127.0.0.1:7071","raft_addr":"127.0.0.1:7081","state":"nonvoter","voter":false,"healthy":false}]}`
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(out)); err != nil || compact.String() != want {
		t.Errorf("json = %s (%v)", compact.String(), err)
	}
	// Leave is leader-only: the follower redirects.
	out, errOut, code = runCLI(t, "--coordinators", followerAddr, "cluster", "leave", "n2")
	must(t, code, 0, errOut)
	if out != "node n2 removed from the cluster\n" || !slices.Equal(ldr.left, []string{"n2"}) {
		t.Errorf("stdout %q, left %v", out, ldr.left)
	}
}

func TestUnavailable(t *testing.T) {
	f := newFake()
	t.Setenv(EnvCoordinators, f.serve(t))
	// --coordinators wins over KILN_COORDINATORS; nothing listens on port 1.
	var out, errb bytes.Buffer
	cmd := NewRootCommand(&out, &errb)
	cmd.SetArgs([]string{"--timeout", "300ms", "status", "1", "--coordinators", "127.0.0.1:1"})
	code := ExitCode(cmd.Execute())
	must(t, code, 1, errb.String())
	if !strings.HasPrefix(errb.String(), "kilnctl: get build 1: no coordinator reachable at 127.0.0.1:1: ") ||
		!strings.HasSuffix(errb.String(), "(hint: is the cluster running? set --coordinators or KILN_COORDINATORS)\n") {
		t.Errorf("stderr = %q", errb.String())
	}
	// Without --coordinators, KILN_COORDINATORS is used.
	f.addBuild(sampleBuild())
	_, errOut, code := runCLI(t, "status", "7")
	must(t, code, 0, errOut)
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(good, []byte("stages:\n  - steps: [{key: a, command: x}, {key: b, command: y}]\n  - steps: [{key: c, command: z}]\n"), 0o644)
	_ = os.WriteFile(bad, []byte("steps:\n  - key: A\n    command: x\n  - key: b\n    timeout: soon\n    command: y\n"), 0o644)
	out, errOut, code := runCLI(t, "validate", good)
	must(t, code, 0, errOut)
	if out != good+": ok (3 steps in 2 stages)\n" {
		t.Errorf("stdout = %q", out)
	}
	out, errOut, code = runCLI(t, "validate", bad)
	must(t, code, 2, errOut)
	want := bad + `:2:10: invalid step key "A" (hint: use lower-case letters, digits, '_', '.' and '-', starting with a letter or digit)` + "\n" +
		bad + `:5:14: timeout: invalid duration "soon" (hint: use a Go duration such as 90s, 10m or 1h30m)` + "\n"
	if out != "" || errOut != want {
		t.Errorf("stderr = %q\nwant     %q", errOut, want)
	}
}

func TestShellLineQuotesArgumentLists(t *testing.T) {
	cases := []struct {
		words []string
		want  string
	}{
		{[]string{"make test && make lint"}, "make test && make lint"},
		{[]string{"make", "test"}, "make test"},
		{[]string{"sh", "-c", "echo hi"}, "sh -c 'echo hi'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"printf", ""}, "printf ''"},
		{[]string{"echo", "$HOME", "a;b"}, "echo '$HOME' 'a;b'"},
	}
	for _, c := range cases {
		if got := shellLine(c.words); got != c.want {
			t.Errorf("shellLine(%q) = %q, want %q", c.words, got, c.want)
		}
	}
}
