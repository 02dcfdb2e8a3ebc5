package agent

import (
	"context"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/agent/executor/dockertest"
)

// TestExecutorLabels: an agent with a Docker engine announces docker=true
// (every step with an image requires it), one with the sandbox
// sandbox=true, and one with neither announces neither.
func TestExecutorLabels(t *testing.T) {
	cfg := NewConfig()
	cfg.Coordinators = []string{"127.0.0.1:1"}
	cfg.WorkDir = t.TempDir()
	a, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.cfg.Labels[DockerLabel]; ok {
		t.Errorf("labels without Docker: %v", a.cfg.Labels)
	}
	if _, ok := a.cfg.Labels[SandboxLabel]; ok {
		t.Errorf("labels without sandbox: %v", a.cfg.Labels)
	}

	sb, err := executor.NewSandbox(context.Background())
	if err != nil {
		t.Logf("no sandbox here (%v); checking the label with a stand-in", err)
		sb = &executor.Sandbox{Bwrap: "/nonexistent/bwrap"}
	}
	cfg.Sandbox = sb
	cfg.Docker = dockertest.Engine(t)
	a, err = New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.Labels[DockerLabel] != "true" || a.cfg.Labels[SandboxLabel] != "true" {
		t.Errorf("labels with Docker and sandbox: %v", a.cfg.Labels)
	}
	if a.exec.Docker != cfg.Docker || a.exec.Sandbox != sb || a.exec.Name != cfg.Name {
		t.Errorf("executor not wired: %+v", a.exec)
	}
}
