package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/cli"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// deployScripts returns shell snippets that append "AGENT ACTION" to
// DIR/seq and to DIR/AGENT, so a test sees which host ran what, in order.
func deployScripts(dir string) (record string) {
	return fmt.Sprintf(`echo "$KILN_AGENT_NAME $KILN_DEPLOY_ACTION" >> %[1]s/seq; echo "$KILN_DEPLOY_ACTION $KILN_DEPLOY_ENV $KILN_DEPLOY_STRATEGY $KILN_DEPLOY_ID" >> %[1]s/$KILN_AGENT_NAME`, dir)
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// deploymentsJSON runs `kilnctl deployments ENV -o json` against the
// cluster.
func deploymentsJSON(t *testing.T, c *Cluster, env string) []cli.DeploymentJSON {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := cli.Main([]string{"--coordinators", strings.Join(c.Addrs(), ","), "--timeout", "10s", "deployments", env, "-o", "json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("kilnctl deployments %s: exit %d: %s", env, code, stderr.String())
	}
	var out []cli.DeploymentJSON
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("kilnctl deployments %s -o json: %v\n%s", env, err, stdout.String())
	}
	return out
}

// startAgents starts agents with labels and waits until the leader has
// every one registered: a deployment's targets are the agents known when
// it starts.
func startAgents(t *testing.T, c *Cluster, labels map[string]string, names ...string) {
	t.Helper()
	for _, n := range names {
		c.StartAgent(n, labels, 1)
	}
	Eventually(t, 10*time.Second, func() bool {
		for _, n := range names {
			a, ok := c.Leader().C.Store().Agent(n)
			if !ok || a.GetState() != kilnv1.AgentState_AGENT_STATE_CONNECTED {
				return false
			}
		}
		return true
	}, fmt.Sprintf("agents %v registered", names))
}

func submitYAML(t *testing.T, c *Cluster, i int, spec string) *kilnv1.Build {
	t.Helper()
	return submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, i), SpecYaml: spec, Submitter: "tester"})
}

// TestRollingDeployRollsBackOnHealthFailure: three env=staging agents; the
// second fails its health check. The rollout stops, rolls back the second
// and then the first host, never touches the third, and the record (as
// kilnctl prints it) says rolled_back with every host's result.
func TestRollingDeployRollsBackOnHealthFailure(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "staging"}, "s1", "s2", "s3")
	startAgents(t, c, map[string]string{"env": "prod"}, "other")
	dir := t.TempDir()
	rec := deployScripts(dir)
	spec := fmt.Sprintf(`steps:
  - key: build
    command: echo built
  - key: staging
    needs: [build]
    deploy:
      environment: staging
      strategy: rolling
      batch: 1
      commands: [%q]
      health: ['test "$KILN_AGENT_NAME" != s2']
      rollback: [%q]
`, rec, rec)
	b := submitYAML(t, c, 0, spec)
	b = waitBuild(t, c, b.GetId(), 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("build %s is %s (%s), want failed", b.GetId(), b.GetState(), b.GetReason())
	}
	if got, want := readLines(t, filepath.Join(dir, "seq")), []string{"s1 deploy", "s2 deploy", "s2 rollback", "s1 rollback"}; !slices.Equal(got, want) {
		t.Fatalf("actions in order: %q, want %q", got, want)
	}
	if lines := readLines(t, filepath.Join(dir, "s3")); lines != nil {
		t.Fatalf("s3 was touched: %q", lines)
	}
	// Every action ran on the agent it was pinned to.
	actions := 0
	for _, j := range b.GetJobs() {
		if pin := j.GetSpec().GetPinAgent(); pin != "" {
			actions++
			if j.GetAgent() != pin {
				t.Fatalf("job %s pinned to %s ran on %s", j.GetKey(), pin, j.GetAgent())
			}
		}
	}
	if actions != 4 {
		t.Fatalf("%d action jobs, want 4 (2 deploys, 2 rollbacks)", actions)
	}
	if got := readLines(t, filepath.Join(dir, "s1")); len(got) != 2 || !strings.HasPrefix(got[0], "deploy staging rolling "+b.GetId()+".staging.1") {
		t.Fatalf("s1 saw %q, want its deploy with KILN_DEPLOY_ENV/STRATEGY/ID set, then its rollback", got)
	}

	ds := deploymentsJSON(t, c, "staging")
	if len(ds) != 1 {
		t.Fatalf("deployments: %+v, want one", ds)
	}
	d := ds[0]
	if d.Outcome != "rolled_back" || d.Build != b.GetId() || d.Strategy != "rolling" || d.StartedBy != "tester" || d.Finished == "" || d.Version != "build-"+b.GetId() {
		t.Fatalf("deployment %+v: want rolled_back of build %s by tester", d, b.GetId())
	}
	phases := map[string]string{}
	for _, h := range d.Hosts {
		phases[h.Agent] = h.Phase
	}
	if want := map[string]string{"s1": "rolled_back", "s2": "rolled_back", "s3": "pending"}; !maps.Equal(phases, want) {
		t.Fatalf("host phases %v, want %v", phases, want)
	}
	if !strings.HasPrefix(d.Reason, "host s2 failed: deploy: failed: exit code 1") {
		t.Fatalf("reason %q does not name s2 and its failed deploy action", d.Reason)
	}
	results := map[string]string{}
	for _, h := range d.Hosts {
		results[h.Agent] = h.Result
	}
	if want := map[string]string{"s1": "deploy: passed; rollback: passed", "s2": "deploy: failed: exit code 1; rollback: passed", "s3": ""}; !maps.Equal(results, want) {
		t.Fatalf("host results %q, want %q", results, want)
	}
	if other := deploymentsJSON(t, c, "prod"); len(other) != 0 {
		t.Fatalf("prod deployments: %+v", other)
	}
}

// TestCanaryStopsAfterFailedVerification: the canary host is deployed,
// then after the verify wait its health is re-run and fails; only the
// canary is rolled back, the rest never touched.
func TestCanaryStopsAfterFailedVerification(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "canary"}, "c1", "c2", "c3", "c4")
	dir := t.TempDir()
	rec := deployScripts(dir)
	spec := fmt.Sprintf(`steps:
  - key: ship
    deploy:
      environment: canary
      strategy: canary
      batch: 25%%
      verify: 300ms
      commands: [%q]
      health: [%q, 'test "$KILN_DEPLOY_ACTION" != verify']
      rollback: [%q]
`, rec, rec, rec)
	b := waitBuild(t, c, submitYAML(t, c, 0, spec).GetId(), 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("build is %s, want failed", b.GetState())
	}
	// The deploy action runs commands then health (one line each).
	want := []string{"c1 deploy", "c1 deploy", "c1 verify", "c1 rollback"}
	if got := readLines(t, filepath.Join(dir, "seq")); !slices.Equal(got, want) {
		t.Fatalf("actions %q, want %q", got, want)
	}
	d := deploymentsJSON(t, c, "canary")[0]
	if d.Outcome != "rolled_back" || d.Hosts[0].Phase != "rolled_back" || d.Hosts[1].Phase != "pending" || d.Hosts[3].Phase != "pending" {
		t.Fatalf("deployment %+v", d)
	}
}

// TestCanarySucceedsThenRestAtOnce: canary first, verified, then the rest
// in one batch.
func TestCanarySucceedsThenRestAtOnce(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "canary"}, "c1", "c2", "c3")
	dir := t.TempDir()
	rec := deployScripts(dir)
	spec := fmt.Sprintf(`steps:
  - key: ship
    deploy:
      environment: canary
      strategy: canary
      verify: 100ms
      commands: [%q]
      health: ["true"]
`, rec)
	b := waitBuild(t, c, submitYAML(t, c, 0, spec).GetId(), 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build is %s (%s), want passed", b.GetState(), b.GetReason())
	}
	got := readLines(t, filepath.Join(dir, "seq"))
	if len(got) != 3 || got[0] != "c1 deploy" || !slices.Contains(got, "c2 deploy") || !slices.Contains(got, "c3 deploy") {
		t.Fatalf("actions %q: want c1 first, then c2 and c3", got)
	}
	d := deploymentsJSON(t, c, "canary")[0]
	if d.Outcome != "succeeded" || d.Hosts[0].Batch != 0 || d.Hosts[1].Batch != 1 || d.Hosts[2].Batch != 1 {
		t.Fatalf("deployment %+v", d)
	}
	for _, h := range d.Hosts {
		if h.Phase != "healthy" {
			t.Fatalf("host %+v, want healthy", h)
		}
	}
}

// TestBlueGreenAlternatesColorsOneAtATime: two builds deploy the same
// blue/green environment; the deployments never overlap, go to green then
// blue, and each switches traffic once its color is verified. A rollback
// then redeploys the first build's version.
func TestBlueGreenAlternatesColorsOneAtATime(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "blue"}, "b1")
	startAgents(t, c, map[string]string{"env": "green"}, "g1", "g2")
	dir := t.TempDir()
	rec := deployScripts(dir)
	spec := fmt.Sprintf(`steps:
  - key: web
    deploy:
      environment: web
      strategy: blue_green
      verify: 50ms
      commands: [%q, "sleep 0.2"]
      health: ["true"]
      blue_green: {blue: env=blue, green: env=green, switch: [%q]}
`, rec, rec)
	b1 := submitYAML(t, c, 0, spec)
	b2 := submitYAML(t, c, 1, spec)
	for _, b := range []*kilnv1.Build{b1, b2} {
		if got := waitBuild(t, c, b.GetId(), 30*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("build %s is %s (%s)", got.GetId(), got.GetState(), got.GetReason())
		}
	}
	ds := deploymentsJSON(t, c, "web")
	if len(ds) != 2 {
		t.Fatalf("deployments %+v", ds)
	}
	first, second := ds[1], ds[0]
	if first.Build != b1.GetId() || first.Color != "green" || second.Color != "blue" || first.Outcome != "succeeded" || second.Outcome != "succeeded" {
		t.Fatalf("deployments: first %+v second %+v", first, second)
	}
	if second.Started < first.Finished {
		t.Fatalf("deployments overlap: second started %s before the first finished %s", second.Started, first.Finished)
	}
	if len(first.Hosts) != 2 || len(second.Hosts) != 1 || second.Hosts[0].Agent != "b1" {
		t.Fatalf("targets: first %+v second %+v", first.Hosts, second.Hosts)
	}
	seq := readLines(t, filepath.Join(dir, "seq"))
	want := []string{"g1 switch", "b1 deploy", "b1 switch"}
	if len(seq) != 5 || !slices.Equal(seq[2:], want) || !slices.Contains(seq[:2], "g1 deploy") || !slices.Contains(seq[:2], "g2 deploy") {
		t.Fatalf("actions %q: want g1, g2 deployed, the switch on g1, then b1 deployed and switched", seq)
	}

	// kilnctl rollback web: back to the first build's version.
	var stdout, stderr bytes.Buffer
	if code := cli.Main([]string{"--coordinators", strings.Join(c.Addrs(), ","), "rollback", "web"}, &stdout, &stderr); code != 0 {
		t.Fatalf("kilnctl rollback web: exit %d: %s", code, stderr.String())
	}
	rb := strings.TrimSpace(stdout.String())
	if got := waitBuild(t, c, rb, 30*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("rollback build %s is %s (%s)", rb, got.GetState(), got.GetReason())
	}
	ds = deploymentsJSON(t, c, "web")
	if len(ds) != 3 || ds[0].Build != rb || ds[0].Version != first.Version || ds[0].Color != "green" || ds[0].Outcome != "succeeded" {
		t.Fatalf("after rollback: %+v, want a green deployment of %s", ds[0], first.Version)
	}
}

// TestDeployResumesAfterLeaderKill: the leader is killed while the second
// host of a rolling deployment runs its deploy action; the new leader
// resumes from the replicated record, and every host is deployed exactly
// once.
func TestDeployResumesAfterLeaderKill(t *testing.T) {
	c := Start(t, 3, Options{})
	startAgents(t, c, map[string]string{"env": "staging"}, "s1", "s2", "s3")
	dir := t.TempDir()
	rec := deployScripts(dir)
	gate := filepath.Join(dir, "go")
	spec := fmt.Sprintf(`steps:
  - key: staging
    deploy:
      environment: staging
      commands: [%q, 'if [ "$KILN_AGENT_NAME" = s2 ]; then while [ ! -f %s ]; do sleep 0.02; done; fi']
      health: ["true"]
      rollback: ["echo rollback >> %s/rollbacks"]
`, rec, gate, dir)
	b := submitYAML(t, c, 0, spec)
	Eventually(t, 20*time.Second, func() bool {
		return slices.Contains(readLines(t, filepath.Join(dir, "seq")), "s2 deploy")
	}, "s2 runs its deploy action")
	old := c.Leader()
	c.Kill(old)
	if l := c.Leader(); l == old {
		t.Fatal("no new leader")
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := waitBuild(t, c, b.GetId(), 30*time.Second)
	if got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build is %s (%s), want passed", got.GetState(), got.GetReason())
	}
	if seq, want := readLines(t, filepath.Join(dir, "seq")), []string{"s1 deploy", "s2 deploy", "s3 deploy"}; !slices.Equal(seq, want) {
		t.Fatalf("actions %q, want each host deployed once, in order %q", seq, want)
	}
	if lines := readLines(t, filepath.Join(dir, "rollbacks")); lines != nil {
		t.Fatalf("rollbacks ran: %q", lines)
	}
	d := deploymentsJSON(t, c, "staging")[0]
	if d.Outcome != "succeeded" {
		t.Fatalf("deployment %+v", d)
	}
	for _, h := range d.Hosts {
		if h.Phase != "healthy" {
			t.Fatalf("host %+v, want healthy", h)
		}
	}
}

// TestDeployWithoutTargetsFails: an environment no agent is labelled with
// fails its deploy step at once, with the reason on record.
func TestDeployWithoutTargetsFails(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "staging"}, "s1")
	b := submitYAML(t, c, 0, `steps:
  - key: ship
    deploy: {environment: nowhere, commands: ["true"]}
  - key: after
    needs: [ship]
    command: "true"
`)
	b = waitBuild(t, c, b.GetId(), 20*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || b.GetReason() != "job ship failed" {
		t.Fatalf("build %s (%s), want failed by ship", b.GetState(), b.GetReason())
	}
	d := deploymentsJSON(t, c, "nowhere")
	if len(d) != 1 || d[0].Outcome != "failed" || d[0].Reason != "no agents match env=nowhere" || len(d[0].Hosts) != 0 {
		t.Fatalf("deployments %+v", d)
	}
}

// TestMigrationBehindApprovalRecordsApprover: the docs/pipeline.md
// pattern. A one-host migration deploy step waits for its approval gate,
// then runs; its deployment record names who approved it; the rollout
// that needs it follows.
func TestMigrationBehindApprovalRecordsApprover(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "db"}, "db1")
	startAgents(t, c, map[string]string{"env": "prod"}, "p1", "p2")
	dir := t.TempDir()
	rec := deployScripts(dir)
	b := submitYAML(t, c, 0, fmt.Sprintf(`concurrency: {group: deploy-production}
steps:
  - key: approve-migration
    approval: {approvers: [alice@host]}
  - key: migrate
    needs: [approve-migration]
    deploy: {environment: db, strategy: all_at_once, commands: [%q]}
  - key: production
    needs: [migrate]
    deploy: {environment: prod, strategy: rolling, batch: 50%%, commands: [%q]}
`, rec, rec))
	Eventually(t, 10*time.Second, func() bool {
		got, ok := c.Leader().C.Store().Build(b.GetId())
		return ok && got.GetState() == kilnv1.BuildState_BUILD_STATE_BLOCKED
	}, "the build waits for the approval")
	if lines := readLines(t, filepath.Join(dir, "seq")); lines != nil {
		t.Fatalf("ran before the approval: %q", lines)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: reqID(t, 1), BuildId: b.GetId(), Step: "approve-migration", Approve: true, By: "alice@host"})
		return err
	}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if got := waitBuild(t, c, b.GetId(), 20*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s (%s)", got.GetState(), got.GetReason())
	}
	if got, want := readLines(t, filepath.Join(dir, "seq")), []string{"db1 deploy", "p1 deploy", "p2 deploy"}; !slices.Equal(got, want) {
		t.Fatalf("actions %q, want %q", got, want)
	}
	m := deploymentsJSON(t, c, "db")
	if len(m) != 1 || m[0].ApprovedBy != "alice@host" || m[0].StartedBy != "tester" || m[0].Outcome != "succeeded" {
		t.Fatalf("migration deployment %+v", m)
	}
}

// TestCancelEndsDeployment: canceling the build during a rollout ends the
// deployment failed, with the reason, and frees the environment.
func TestCancelEndsDeployment(t *testing.T) {
	c := Start(t, 1, Options{})
	startAgents(t, c, map[string]string{"env": "staging"}, "s1", "s2")
	dir := t.TempDir()
	rec := deployScripts(dir)
	b := submitYAML(t, c, 0, fmt.Sprintf(`steps:
  - key: ship
    deploy: {environment: staging, commands: [%q, "sleep 30"]}
`, rec))
	Eventually(t, 10*time.Second, func() bool {
		return slices.Contains(readLines(t, filepath.Join(dir, "seq")), "s1 deploy")
	}, "s1 runs its deploy action")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.CancelBuild(ctx, &kilnv1.CancelBuildRequest{RequestId: reqID(t, 1), BuildId: b.GetId(), Reason: "stop"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var d []cli.DeploymentJSON
	Eventually(t, 10*time.Second, func() bool {
		d = deploymentsJSON(t, c, "staging")
		return len(d) == 1 && d[0].Outcome != "running"
	}, "the deployment ends")
	if d[0].Outcome != "failed" || !strings.HasPrefix(d[0].Reason, "the deploy step ended: canceled") || d[0].Hosts[1].Phase != "pending" {
		t.Fatalf("deployment %+v", d[0])
	}
	// The environment is free again.
	b2 := submitYAML(t, c, 2, `steps:
  - key: ship
    deploy: {environment: staging, strategy: all_at_once, commands: ["true"]}
`)
	if got := waitBuild(t, c, b2.GetId(), 20*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("next deployment: %s (%s)", got.GetState(), got.GetReason())
	}
}

// BenchmarkRollingDeploy measures a rolling deployment (batch 1) over 8
// in-process agents with a trivial command: the per-host cost of the
// controller's commands, dispatch and the agent round trip. Reported as
// ms/host.
func BenchmarkRollingDeploy(b *testing.B) {
	c := Start(b, 1, Options{})
	var names []string
	for i := 1; i <= 8; i++ {
		names = append(names, fmt.Sprintf("h%d", i))
		c.StartAgent(names[i-1], map[string]string{"env": "bench"}, 1)
	}
	Eventually(b, 10*time.Second, func() bool { return len(c.Leader().C.Store().Agents()) == len(names) }, "agents registered")
	spec := `steps:
  - key: ship
    deploy: {environment: bench, strategy: rolling, commands: ["true"], health: ["true"]}
`
	cl := c.Client()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var id string
		err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("bench-%d-%d", i, time.Now().UnixNano()), SpecYaml: spec})
			id = resp.GetBuild().GetId()
			return err
		})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		Eventually(b, 60*time.Second, func() bool {
			got, ok := c.Leader().C.Store().Build(id)
			return ok && got.GetState() == kilnv1.BuildState_BUILD_STATE_PASSED
		}, "deployment build passes")
	}
	b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(b.N*len(names)), "ms/host")
}

// TestLostTargetFailsWithoutRollingItBack: a target whose agent went away
// (disconnected for longer than the lease TTL) before its turn fails the
// rollout; it was never updated, so only the
// hosts that were are rolled back, and the build ends.
func TestLostTargetFailsWithoutRollingItBack(t *testing.T) {
	c := Start(t, 1, Options{LeaseTTL: 500 * time.Millisecond})
	startAgents(t, c, map[string]string{"env": "staging"}, "s1", "s2")
	dir := t.TempDir()
	rec := deployScripts(dir)
	gate := filepath.Join(dir, "go")
	b := submitYAML(t, c, 0, fmt.Sprintf(`steps:
  - key: ship
    deploy:
      environment: staging
      commands: [%q, 'while [ ! -f %s ]; do sleep 0.02; done']
      rollback: [%q]
`, rec, gate, rec))
	Eventually(t, 10*time.Second, func() bool {
		return slices.Contains(readLines(t, filepath.Join(dir, "seq")), "s1 deploy")
	}, "s1 runs its deploy action")
	for _, a := range c.Agents {
		if a.Name == "s2" {
			c.StopAgent(a)
		}
	}
	Eventually(t, 10*time.Second, func() bool {
		a, ok := c.Leader().C.Store().Agent("s2")
		return ok && a.GetState() == kilnv1.AgentState_AGENT_STATE_DISCONNECTED
	}, "s2 is disconnected")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := waitBuild(t, c, b.GetId(), 20*time.Second)
	if got.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("build %s (%s), want failed", got.GetState(), got.GetReason())
	}
	if seq, want := readLines(t, filepath.Join(dir, "seq")), []string{"s1 deploy", "s1 rollback"}; !slices.Equal(seq, want) {
		t.Fatalf("actions %q, want %q", seq, want)
	}
	d := deploymentsJSON(t, c, "staging")[0]
	if d.Outcome != "rolled_back" || d.Hosts[1].Phase != "failed" || d.Hosts[1].Result != "deploy: agent lost before it ran" || d.Hosts[0].Phase != "rolled_back" {
		t.Fatalf("deployment %+v", d)
	}
}
