package deployments

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// composeCmd returns how to run Docker Compose here (docker-compose v1 or
// the docker compose plugin), or skips the test with the reason.
func composeCmd(t *testing.T) []string {
	t.Helper()
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("no docker client: the compose cluster test needs a Docker engine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no usable Docker engine (docker info: %v: %s)", err, bytes.TrimSpace(out))
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	if err := exec.CommandContext(ctx, docker, "compose", "version").Run(); err == nil {
		return []string{docker, "compose"}
	}
	t.Skip("Docker engine present but neither docker-compose nor the docker compose plugin (apt-get install docker-compose)")
	return nil
}

// staticELF reports whether the file is an ELF executable without a
// dynamic loader (runs in a FROM scratch image).
func staticELF(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", p)
		}
	}
	return nil
}

// compose runs one Docker Compose project in a directory of its own.
type compose struct {
	cmd     []string
	dir     string
	project string
}

func (c *compose) run(ctx context.Context, args ...string) (string, error) {
	full := append(append(append([]string(nil), c.cmd[1:]...), "-p", c.project, "-f", filepath.Join(c.dir, "docker-compose.yml")), args...)
	cmd := exec.CommandContext(ctx, c.cmd[0], full...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "KILN_IMAGE_LABEL="+c.project)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w", filepath.Base(c.cmd[0]), strings.Join(full, " "), err)
	}
	return string(out), nil
}

// kilnctl runs kilnctl inside coordinator n1's container (no port is
// published: nothing of the test listens on the host).
func (c *compose) kilnctl(ctx context.Context, args ...string) (string, error) {
	return c.run(ctx, append([]string{"exec", "-T", "n1", "kilnctl"}, args...)...)
}

// TestComposeCluster builds the images of docker/ (FROM scratch, nothing
// pulled), starts 3 coordinators and 2 agents with docker-compose.yml under
// a unique project name, waits for a leader and both agents, runs a real
// build through the cluster and removes containers, volumes and images.
func TestComposeCluster(t *testing.T) {
	cmd := composeCmd(t)
	bin := binaries(t)
	for _, f := range []string{"kiln-coordinator", "kiln-agent", "kilnctl", "busybox"} {
		if err := staticELF(filepath.Join(bin, f)); err != nil {
			t.Fatalf("the images need static binaries: %v", err)
		}
	}
	dir := t.TempDir()
	for _, f := range []string{"Dockerfile", "docker-compose.yml"} {
		data, err := os.ReadFile(filepath.Join("docker", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(bin, filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Rename(filepath.Join(dir, "bin"), bin) })

	c := &compose{cmd: cmd, dir: dir, project: fmt.Sprintf("kilntest%d%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		// Its own deadline: the test's may have run out.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			out, _ := c.run(ctx, "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := c.run(ctx, "down", "-v", "--rmi", "local", "-t", "5"); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
		// The Dockerfile's helper stage is an untagged image of its own.
		if out, err := exec.CommandContext(ctx, "docker", "image", "prune", "-f", "--filter", "label=kiln.image="+c.project).CombinedOutput(); err != nil {
			t.Errorf("docker image prune: %v\n%s", err, out)
		}
	})
	start := time.Now()
	if out, err := c.run(ctx, "up", "-d", "--build", "--scale", "agent=2"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("images built and cluster started in %v", time.Since(start).Round(time.Millisecond))

	// A leader with three voters, and both agents connected.
	var last string
	for {
		out, err := c.kilnctl(ctx, "agents", "-o", "json")
		var agents []struct{ Name, State string }
		if err == nil && json.Unmarshal([]byte(out), &agents) == nil {
			n := 0
			for _, a := range agents {
				if a.State == "connected" {
					n++
				}
			}
			if n == 2 {
				break
			}
		}
		last = fmt.Sprint(out, err)
		if ctx.Err() != nil {
			t.Fatalf("two connected agents never showed: last answer %s", last)
		}
		// Polled state (there is no event to wait on from outside the
		// containers); each round is a docker exec, itself ~0.2 s.
		time.Sleep(500 * time.Millisecond)
	}
	out, err := c.kilnctl(ctx, "cluster", "status", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var st struct {
		Leader string
		Nodes  []struct {
			ID       string
			Voter    bool
			RaftAddr string `json:"raft_addr"`
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("cluster status: %v\n%s", err, out)
	}
	if st.Leader == "" || len(st.Nodes) != 3 {
		t.Fatalf("cluster status: %s", out)
	}
	for _, n := range st.Nodes {
		if !n.Voter {
			t.Errorf("node %s is not a voter: %s", n.ID, out)
		}
		// Raft addresses stay names (a recreated container may get
		// another IP); see coordinator/raftnode's hostAddr.
		if n.RaftAddr != n.ID+":7071" {
			t.Errorf("node %s has Raft address %q, want %s:7071: %s", n.ID, n.RaftAddr, n.ID, out)
		}
	}

	// A real build: the agent runs it with busybox's sh in its /work.
	out, err = c.kilnctl(ctx, "run", "--wait", "--", `echo "built on $(hostname) in $PWD by $(id -u)"; ls /bin/sh`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "build 1 passed") || !strings.Contains(out, " in /work/") || !strings.Contains(out, "/bin/sh\n") {
		t.Fatalf("build output:\n%s", out)
	}
	t.Logf("cluster ready and build passed after %v", time.Since(start).Round(time.Millisecond))
}
