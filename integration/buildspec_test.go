package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// devCluster starts a --dev coordinator and waits for its built-in agent.
func devCluster(t *testing.T, h *harness) []string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	p := h.startProc("coordinator-dev", "kiln-coordinator", "--dev", "--data-dir", h.root+"/dev", "--grpc-addr", addr, "--http-addr", "")
	t.Cleanup(func() { p.stop(20 * time.Second) })
	eventually(t, 30*time.Second, func() error {
		var agents []agentJSON
		if err := h.ctlJSON([]string{addr}, &agents, "agents"); err != nil {
			return err
		}
		for _, a := range agents {
			if a.Name == "local" && a.State == "connected" {
				return nil
			}
		}
		return fmt.Errorf("built-in agent \"local\" not connected: %+v", agents)
	})
	return []string{addr}
}

// runBuildspec writes src as a buildspec, runs it with kilnctl run -f
// --wait and returns the result (the log is on stdout).
func runBuildspec(t *testing.T, h *harness, addrs []string, name, src string) ctlResult {
	t.Helper()
	f := filepath.Join(h.root, name)
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return h.ctl(addrs, "run", "-f", f, "--wait")
}

// Forms of real buildspecs, through a real agent: empty command items, a
// scalar artifacts.files, a report group whose base-directory is an
// absolute path outside the workspace, exported variables; and run-as,
// refused at run time when the agent cannot become the user.
func TestBuildspecCodeBuildForms(t *testing.T) {
	h := newHarness(t)
	addrs := devCluster(t, h)
	reports := filepath.Join(h.root, "abs-reports")
	r := runBuildspec(t, h, addrs, "forms.yml", `version: 0.2
env:
  git-credential-helper: yes
  exported-variables: [TAG]
phases:
  build:
    commands:
      -
      - TAG=v7
      - mkdir -p '`+reports+`' && printf '<testsuite name="s" tests="1"><testcase classname="c" name="abs_dir_case"/></testsuite>' > '`+reports+`/unit.xml'
      - echo art > out.txt
artifacts:
  files: out.txt
reports:
  unit:
    files: '*.xml'
    base-directory: '`+reports+`'
`)
	if r.code != 0 || !strings.Contains(r.stdout, "[buildspec] exported variable TAG=v7\n") ||
		!strings.Contains(r.stdout, "[buildspec] reports unit: copying "+reports+" to .kiln-buildspec/reports/0 in the workspace\n") {
		t.Fatalf("forms build: %s", r)
	}
	id := buildID(t, r)
	tests := h.ctl(addrs, "tests", id, "-o", "json")
	if tests.code != 0 || !strings.Contains(tests.stdout, "abs_dir_case") || !strings.Contains(tests.stdout, ".kiln-buildspec/reports/0/unit.xml") {
		t.Errorf("tests of build %s: %s", id, tests)
	}
	arts := h.ctl(addrs, "artifacts", id)
	if arts.code != 0 || !strings.Contains(arts.stdout, "out.txt") {
		t.Errorf("artifacts of build %s: %s", id, arts)
	}

	// A user the agent does not have: refused when the job runs, before
	// any phase, with the reason in the log.
	r = runBuildspec(t, h, addrs, "nouser.yml", "version: 0.2\nrun-as: kiln-no-such-user\nphases:\n  build:\n    commands: [echo never-ran]\n")
	if r.code != 1 || strings.Contains(r.stdout, "never-ran") ||
		!strings.Contains(r.stdout, "[buildspec] run-as kiln-no-such-user: there is no such user where the job runs") {
		t.Errorf("run-as unknown user: %s", r)
	}

	// The agent runs as root here: run-as switches with setpriv. Only id
	// runs as nobody; nothing changes owner or mode.
	if os.Geteuid() != 0 {
		t.Skip("not root: the switch itself is not tested here")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv")
	}
	uid, err := exec.Command("id", "-u", "nobody").Output()
	if err != nil {
		t.Skip("no user nobody")
	}
	r = runBuildspec(t, h, addrs, "runas.yml", `version: 0.2
phases:
  build:
    run-as: nobody
    commands:
      - echo "build uid=$(id -u)"
  post_build:
    commands:
      - echo "post uid=$(id -u)"
`)
	if r.code != 0 || !strings.Contains(r.stdout, "\nbuild uid="+strings.TrimSpace(string(uid))+"\n") || !strings.Contains(r.stdout, "\npost uid=0\n") {
		t.Errorf("phase run-as nobody: %s", r)
	}
}

// buildID reads the build id from kilnctl run --wait's "build ID submitted".
func buildID(t *testing.T, r ctlResult) string {
	t.Helper()
	for _, l := range strings.Split(r.stderr, "\n") {
		if id, ok := strings.CutPrefix(l, "build "); ok {
			if id, ok = strings.CutSuffix(id, " submitted"); ok {
				return id
			}
		}
	}
	t.Fatalf("no build id in: %s", r)
	return ""
}
