package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/agent/executor/dockertest"
)

// uniqueName is a name no other test (or helper on this machine) uses, so
// that container labels and orphan removal never cross tests.
func uniqueName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// stepContainers lists the containers of agent (running or not); with job
// set, only those of that job.
func stepContainers(t testing.TB, d *executor.Docker, agent, job string) []string {
	t.Helper()
	f := make(client.Filters).Add("label", executor.LabelAgent+"="+agent)
	if job != "" {
		f = f.Add("label", executor.LabelJob+"="+job)
	}
	list, err := d.Client().ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	var ids []string
	for _, c := range list.Items {
		ids = append(ids, c.ID[:12])
	}
	return ids
}

// visibilityChecks are commands that print SEES-... when the step can see
// something of the host it must not: /work, the agent's work dir, another
// job's workspace.
func visibilityChecks(workDir, neighbour string) []string {
	return []string{
		`if [ -e /work ]; then echo "SEES-/work"; fi`,
		`if ls / | grep -qx work; then echo "SEES-work-in-root"; fi`,
		fmt.Sprintf(`if [ -e %s ]; then echo "SEES-neighbour-workspace"; fi`, neighbour),
		fmt.Sprintf(`if [ -e %s/secret ]; then echo "SEES-neighbour-secret"; fi`, neighbour),
		fmt.Sprintf(`if [ "$(ls %s 2>/dev/null)" != "" ] && [ "$(ls %s)" != "$(basename $KILN_WORKSPACE)" ]; then echo "SEES-agent-work-dir"; fi`, workDir, workDir),
	}
}

func yamlList(cmds []string) string {
	var b strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&b, "      - %q\n", c)
	}
	return b.String()
}

// TestDockerExecutor runs a two-step pipeline in a container image built
// here (the second step uses the first's artifact), shows the steps cannot
// see the host's /work, the agent's work dir or another job's workspace,
// cancels a running container step (container gone within the grace
// period), and SIGKILLs the agent mid-step: the orphan container is
// removed when the agent restarts.
func TestDockerExecutor(t *testing.T) {
	d := dockertest.Engine(t)
	image := dockertest.BuildBusybox(t, d)
	name := uniqueName("dk")
	h := newHarness(t)
	workDir := filepath.Join(h.root, "work", name)
	t.Cleanup(func() { _, _ = d.RemoveOrphans(context.Background(), name, workDir, nil) })
	neighbour := filepath.Join(workDir, "other-job-a1")
	if err := os.MkdirAll(neighbour, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(neighbour, "secret"), []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}

	c := h.startCluster(1)
	const grace = 5 * time.Second
	agentArgs := []string{
		"--coordinators", strings.Join(c.addrs(), ","),
		"--name", name,
		"--work-dir", workDir,
		"--heartbeat", agentHeartbeat,
		"--kill-grace", grace.String(),
	}
	ag := h.startProc("agent-"+name, "kiln-agent", agentArgs...)
	// A shell-only agent: it must never get a step with an image.
	plain := uniqueName("plain")
	h.startProc("agent-"+plain, "kiln-agent", "--coordinators", strings.Join(c.addrs(), ","), "--name", plain,
		"--work-dir", filepath.Join(h.root, "work", plain), "--heartbeat", agentHeartbeat, "--docker-host", "none")
	c.waitAgentStates(20*time.Second, map[string]string{name: "connected", plain: "connected"})
	agents, err := c.agents()
	if err != nil {
		t.Fatal(err)
	}
	if agents[name].Labels["docker"] != "true" || agents[plain].Labels["docker"] == "true" {
		t.Fatalf("labels: %s=%v, %s=%v; want docker=true only on the first", name, agents[name].Labels, plain, agents[plain].Labels)
	}

	t.Run("pipeline", func(t *testing.T) {
		checks := visibilityChecks(workDir, neighbour)
		file := writeFile(t, h.root, "containers.yaml", fmt.Sprintf(`steps:
  - key: build
    image: %s
    pull: never
    commands:
      - echo "built in $(pwd) by $(id -u)" > app.txt
%s    artifacts: [app.txt]
  - key: test
    needs: [build]
    image: %s
    pull: never
    commands:
      - cat app.txt
      - test "$(cat app.txt)" = "built in /workspace by 0"
%s`, image, yamlList(checks), image, yamlList(checks)))
		id := h.runFile(c.addrs(), file)
		b := h.waitFinished(c.addrs(), id, 60*time.Second)
		logs, _ := h.logs(c.addrs(), id)
		requirePassed(t, b, 1)
		for _, j := range b.Jobs {
			if j.Agent != name {
				t.Errorf("job %s ran on %s, want the Docker agent %s", j.Key, j.Agent, name)
			}
		}
		if strings.Contains(logs, "SEES-") {
			t.Fatalf("a container step sees the host:\n%s", logs)
		}
		if !strings.Contains(logs, "built in /workspace by 0\n") {
			t.Fatalf("the test step did not get the build step's artifact:\n%s", logs)
		}
		if ids := stepContainers(t, d, name, ""); len(ids) != 0 {
			t.Errorf("containers left after the build: %v", ids)
		}
	})

	t.Run("services", func(t *testing.T) {
		file := writeFile(t, h.root, "services.yaml", fmt.Sprintf(`steps:
  - key: integ
    image: %[1]s
    pull: never
    services:
      - name: web
        image: %[1]s
        env: {MSG: from-the-service}
        command: ["/bin/sh", "-c", "mkdir /www && echo $MSG > /www/index.html && exec httpd -f -p 8080 -h /www"]
    commands:
      - i=0; until wget -q -O- http://web:8080/; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.1; done
`, image))
		id := h.runFile(c.addrs(), file)
		b := h.waitFinished(c.addrs(), id, 60*time.Second)
		logs, _ := h.logs(c.addrs(), id)
		requirePassed(t, b, 1)
		if !strings.Contains(logs, "from-the-service\n") {
			t.Fatalf("the step did not reach its service by name:\n%s", logs)
		}
		if ids := stepContainers(t, d, name, ""); len(ids) != 0 {
			t.Errorf("containers left after the build: %v", ids)
		}
	})

	t.Run("buildspec", func(t *testing.T) {
		file := writeFile(t, h.root, "buildspec.yml", `version: 0.2
env:
  variables:
    GREETING: hello
phases:
  build:
    commands:
      - echo "$GREETING from $(pwd)" > out.txt
  post_build:
    commands:
      - cat out.txt
artifacts:
  files: [out.txt]
`)
		r := h.ctl(c.addrs(), "run", "-f", file, "--image", image)
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || id == "" {
			t.Fatalf("run -f buildspec.yml --image: %s", r)
		}
		b := h.waitFinished(c.addrs(), id, 60*time.Second)
		logs, _ := h.logs(c.addrs(), id)
		requirePassed(t, b, 1)
		if b.Jobs[0].Agent != name || !strings.Contains(logs, "hello from /workspace\n") {
			t.Fatalf("buildspec ran on %s, log:\n%s", b.Jobs[0].Agent, logs)
		}
	})

	t.Run("buildspec in a wrapping .kiln.yaml", func(t *testing.T) {
		// The buildspec comes with the source (uploaded here), as CodeBuild
		// reads it from the repository; the pipeline names it and the image.
		src := filepath.Join(h.root, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, src, "buildspec.yml", "version: 0.2\nphases:\n  build:\n    commands:\n      - echo \"from $(pwd) - $(cat input.txt)\"\n")
		writeFile(t, src, "input.txt", "uploaded source")
		file := writeFile(t, h.root, "wrap.yaml", fmt.Sprintf("steps:\n  - key: codebuild\n    image: %s\n    pull: never\n    buildspec: buildspec.yml\n", image))
		r := h.ctl(c.addrs(), "run", "-f", file, "--upload", src)
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || id == "" {
			t.Fatalf("run -f wrap.yaml --upload: %s", r)
		}
		b := h.waitFinished(c.addrs(), id, 60*time.Second)
		logs, _ := h.logs(c.addrs(), id)
		requirePassed(t, b, 1)
		if b.Jobs[0].Agent != name || !strings.Contains(logs, "from /workspace - uploaded source\n") {
			t.Fatalf("buildspec ran on %s, log:\n%s", b.Jobs[0].Agent, logs)
		}
	})

	// running submits a container step that prints started and sleeps,
	// waits until it runs and returns the build id and its job id.
	running := func(t *testing.T) (string, string) {
		t.Helper()
		id := h.submit(c.addrs(), "echo started; sleep 120", "--image", image)
		var job string
		eventually(t, 30*time.Second, func() error {
			got, err := h.logs(c.addrs(), id)
			if err != nil {
				return err
			}
			if !strings.Contains(got, "started\n") {
				return fmt.Errorf("log so far: %q", got)
			}
			b, err := h.status(c.addrs(), id)
			if err != nil {
				return err
			}
			job = b.Jobs[0].ID
			return nil
		})
		if ids := stepContainers(t, d, name, job); len(ids) != 1 {
			t.Fatalf("want one container of job %s, have %v", job, ids)
		}
		return id, job
	}

	t.Run("cancel", func(t *testing.T) {
		id, job := running(t)
		began := time.Now()
		if r := h.ctl(c.addrs(), "cancel", id); r.code != 0 {
			t.Fatalf("cancel: %s", r)
		}
		// The bound is the grace period plus slack for a loaded machine;
		// the measured time is logged.
		eventually(t, grace+5*time.Second, func() error {
			if ids := stepContainers(t, d, name, job); len(ids) != 0 {
				return fmt.Errorf("containers of %s still there: %v", job, ids)
			}
			return nil
		})
		t.Logf("cancel → container gone in %v (grace %v)", time.Since(began).Round(time.Millisecond), grace)
		if b := h.waitFinished(c.addrs(), id, 20*time.Second); b.State != "canceled" {
			t.Fatalf("build %s is %s, want canceled", id, b.State)
		}
	})

	t.Run("orphan after agent kill", func(t *testing.T) {
		id, job := running(t)
		orphan := stepContainers(t, d, name, job)
		ag.kill9()
		// The agent is gone; its container is not.
		if ids := stepContainers(t, d, name, job); len(ids) != 1 || ids[0] != orphan[0] {
			t.Fatalf("after SIGKILL of the agent: containers %v, want the orphan %v", ids, orphan)
		}
		ag.start()
		eventually(t, 20*time.Second, func() error {
			for _, id := range stepContainers(t, d, name, job) {
				if id == orphan[0] {
					return fmt.Errorf("orphan container %s still there", id)
				}
			}
			return nil
		})
		if r := h.ctl(c.addrs(), "cancel", id); r.code != 0 {
			t.Fatalf("cancel: %s", r)
		}
		h.waitFinished(c.addrs(), id, 30*time.Second)
	})
}

// TestSandboxExecutor: an agent started with --sandbox runs shell steps
// under bubblewrap with the same visibility guarantees, and network: none
// takes the network away.
func TestSandboxExecutor(t *testing.T) {
	if _, err := executor.NewSandbox(context.Background()); err != nil {
		t.Skipf("no sandbox on this host: %v", err)
	}
	name := uniqueName("sb")
	h := newHarness(t)
	workDir := filepath.Join(h.root, "work", name)
	neighbour := filepath.Join(workDir, "other-job-a1")
	if err := os.MkdirAll(neighbour, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(neighbour, "secret"), []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := h.startCluster(1)
	h.startProc("agent-"+name, "kiln-agent", "--coordinators", strings.Join(c.addrs(), ","), "--name", name,
		"--work-dir", workDir, "--heartbeat", agentHeartbeat, "--docker-host", "none", "--sandbox")
	c.waitAgentStates(20*time.Second, map[string]string{name: "connected"})

	checks := append(visibilityChecks(workDir, neighbour),
		fmt.Sprintf(`if kill -0 %d 2>/dev/null; then echo "SEES-test-process"; fi`, os.Getpid()),
		`if [ -n "$KILN_IT_OWNER" ]; then echo "SEES-agent-env"; fi`)
	file := writeFile(t, h.root, "sandbox.yaml", fmt.Sprintf(`steps:
  - key: build
    commands:
      - echo built > app.txt
%s    artifacts: [app.txt]
  - key: test
    needs: [build]
    network: none
    commands:
      - test "$(cat app.txt)" = built
      - if [ -e /sys/class/net/eth0 ]; then echo SEES-network; fi
%s`, yamlList(checks), yamlList(checks)))
	id := h.runFile(c.addrs(), file)
	b := h.waitFinished(c.addrs(), id, 60*time.Second)
	logs, _ := h.logs(c.addrs(), id)
	requirePassed(t, b, 1)
	if strings.Contains(logs, "SEES-") {
		t.Fatalf("a sandboxed step sees the host:\n%s", logs)
	}
}
