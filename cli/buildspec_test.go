package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testBuildspec = `version: 0.2
env:
  variables:
    GOFLAGS: -mod=readonly
phases:
  install:
    runtime-versions:
      golang: 1.22
    commands:
      - go version
  build:
    commands:
      - go build ./...
`

func TestValidateBuildspec(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "buildspec.yml")
	bad := filepath.Join(dir, "bad.yml")
	_ = os.WriteFile(good, []byte(testBuildspec), 0o644)
	_ = os.WriteFile(bad, []byte("version: 0.2\nenv:\n  parameter-store:\n    X: /x\nphases:\n  build:\n    commands: [make]\n"), 0o644)

	out, errOut, code := runCLI(t, "validate", good)
	must(t, code, 0, errOut)
	if out != good+": ok (buildspec, 1 step)\n" {
		t.Errorf("stdout = %q", out)
	}
	if want := good + ":7:5: warning: phases.install.runtime-versions is ignored: install runtimes in your commands or use an agent with them\n"; errOut != want {
		t.Errorf("stderr = %q\nwant     %q", errOut, want)
	}

	// parameter-store maps to a Kiln secret of the same name, with a warning.
	out, errOut, code = runCLI(t, "validate", bad)
	must(t, code, 0, errOut)
	if out != bad+": ok (buildspec, 1 step)\n" || !strings.HasPrefix(errOut, bad+":4:5: warning: env.parameter-store.X") {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}

	wrong := filepath.Join(dir, "wrong.yml")
	_ = os.WriteFile(wrong, []byte("version: 0.1\nphases:\n  build:\n    commands: [make]\n"), 0o644)
	out, errOut, code = runCLI(t, "validate", wrong)
	must(t, code, 2, errOut)
	if out != "" || !strings.HasPrefix(errOut, wrong+":1:") {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}
}

func TestRunFileBuildspec(t *testing.T) {
	f := newFake()
	addr := f.serve(t)
	file := filepath.Join(t.TempDir(), "buildspec.yml")
	if err := os.WriteFile(file, []byte(testBuildspec), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "--coordinators", addr, "run", "-f", file)
	must(t, code, 0, errOut)
	if out != "1\n" {
		t.Errorf("stdout = %q", out)
	}
	if !strings.Contains(errOut, file+":7:5: warning: phases.install.runtime-versions") {
		t.Errorf("stderr lacks the warning: %q", errOut)
	}
	if req := f.submits[0]; req.SpecYaml != testBuildspec || req.SpecFilename != file || req.Command != "" {
		t.Errorf("request = %v", req)
	}
}
