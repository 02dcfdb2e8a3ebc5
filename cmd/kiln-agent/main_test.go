package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("KILN_AGENT_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	cfg, _, level, err := parseFlags([]string{
		"--coordinators", "127.0.0.1:1,127.0.0.1:2", "--name", "a1", "--labels", "os=plan9,pool=x",
		"--slots", "2", "--work-dir", "/tmp/w", "--heartbeat", "1s", "--log-level", "debug",
	}, &stderr)
	if err != nil {
		t.Fatal(err, stderr.String())
	}
	if len(cfg.Coordinators) != 2 || cfg.Name != "a1" || cfg.Slots != 2 || cfg.WorkDir != "/tmp/w" ||
		cfg.HeartbeatInterval != time.Second || level.String() != "debug" {
		t.Fatalf("cfg = %+v level %v", cfg, level)
	}
	if cfg.Labels["os"] != "plan9" || cfg.Labels["pool"] != "x" || cfg.Labels["arch"] != runtime.GOARCH {
		t.Fatalf("labels = %v", cfg.Labels)
	}

	cfg, _, _, err = parseFlags([]string{"--coordinators", "h:1"}, &stderr)
	if err != nil || cfg.Slots != 1 || cfg.WorkDir != "./kiln-work" || cfg.Name == "" || cfg.Labels["os"] != runtime.GOOS {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}

	cfg, rt, _, err := parseFlags([]string{"--coordinators", "h:1", "--docker-host", "none", "--sandbox",
		"--sandbox-hide", "/srv/secrets, /etc/ci", "--kill-grace", "2s"}, &stderr)
	if err != nil || rt.dockerHost != "none" || !rt.sandbox || len(rt.hide) != 2 || rt.hide[1] != "/etc/ci" || cfg.KillGrace != 2*time.Second {
		t.Fatalf("executor flags: %+v %+v %v", rt, cfg, err)
	}

	for _, bad := range [][]string{
		{},
		{"--coordinators", "h:1", "--slots", "0"},
		{"--coordinators", "h:1", "--labels", "novalue"},
		{"--coordinators", "h:1", "--log-level", "loud"},
		{"--coordinators", "nohostport"},
		{"--coordinators", "h:1", "--sandbox-hide", "/x"},
		{"--coordinators", "h:1", "--sandbox", "--sandbox-hide", "relative"},
		{"--coordinators", "h:1", "--kill-grace", "0s"},
	} {
		if _, _, _, err := parseFlags(bad, &stderr); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

// TestSignalDrainsIdleAgent runs the binary (this test executable in main
// mode) and checks that SIGTERM with no jobs held exits 0 even while no
// coordinator is reachable.
func TestSignalDrainsIdleAgent(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--coordinators", "127.0.0.1:1", "--work-dir", filepath.Join(t.TempDir(), "w"), "--log-level", "debug")
	cmd.Env = append(os.Environ(), "KILN_AGENT_TEST_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// Wait until the agent logs that it started (signal handlers are set by then).
	buf := make([]byte, 4096)
	for !bytes.Contains(stderr.Bytes(), []byte("agent starting")) {
		n, err := r.Read(buf)
		stderr.Write(buf[:n])
		if err != nil {
			t.Fatalf("agent output ended: %v\n%s", err, stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _ = stderr.ReadFrom(r)
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("agent did not exit after SIGTERM")
	}
}
