package buildfile

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/kiln-ci/kiln/internal/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDetect(t *testing.T) {
	cases := []struct{ src, want string }{
		{"version: 0.2\nphases:\n  build:\n    commands: [make]\n", Buildspec},
		{"phases:\n  build:\n    commands: [make]\n", Buildspec}, // no version: the buildspec parser says so
		{"version: 0.2\nphase:\n  build: {}\n", Buildspec},       // a typo of phases
		{"steps:\n  - key: a\n    command: make\n", Kiln},
		{"name: x\nversion: 1\nsteps: [{key: a, command: make}]\n", Kiln}, // version with steps: Kiln's parser judges
		{"stages: []\n", Kiln},
		{"- a\n- b\n", Kiln},
		{"steps: [\n", Kiln}, // invalid YAML: the pipeline parser reports it
		{"", Kiln},
	}
	for _, c := range cases {
		if got := Detect([]byte(c.src)); got != c.want {
			t.Errorf("Detect(%q) = %s, want %s", c.src, got, c.want)
		}
	}
}

func TestLoadBuildspec(t *testing.T) {
	src := "version: 0.2\nenv:\n  variables: {A: b}\n  exported-variables: [A]\nphases:\n  build:\n    commands: [make]\nartifacts:\n  files: ['**/*']\n  base-directory: out\n"
	f, err := Load("ci/buildspec.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if f.Dialect != Buildspec || f.Buildspec == nil || f.Pipeline != nil || f.Name() != "buildspec.yml" || f.NumSteps() != 1 {
		t.Fatalf("file = %+v name %q", f, f.Name())
	}
	if len(f.Warnings) != 1 || !strings.HasPrefix(f.Warnings[0], "ci/buildspec.yml:4:3: warning: env.exported-variables") {
		t.Errorf("warnings = %q", f.Warnings)
	}
	steps := f.Steps()
	if len(steps) != 1 || steps[0].Key != "buildspec" || steps[0].Env["A"] != "b" ||
		len(steps[0].Artifacts) != 1 || steps[0].Artifacts[0] != "out/**/*" {
		t.Errorf("steps = %v", steps)
	}
	if f.Env() != nil {
		t.Errorf("env = %v", f.Env())
	}
}

func TestLoadKiln(t *testing.T) {
	f, err := Load("k.yaml", []byte("name: app\nenv: {X: y}\nsteps:\n  - key: a\n    command: make\n  - key: b\n    command: test\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Dialect != Kiln || f.Name() != "app" || f.NumSteps() != 2 || len(f.Steps()) != 2 || f.Env()["X"] != "y" || len(f.Warnings) != 0 {
		t.Errorf("file = %+v", f)
	}
}

func TestLoadErrorsArePositioned(t *testing.T) {
	for _, src := range []string{
		"version: 0.1\nphases: {build: {commands: [make]}}\n",
		"steps:\n  - key: A\n    command: x\n",
	} {
		_, err := Load("f.yml", []byte(src))
		var errs *pipeline.Errors
		if !errors.As(err, &errs) || !strings.HasPrefix(errs.List[0].Error(), "f.yml:") || errs.List[0].Line == 0 {
			t.Errorf("Load(%q) error = %v", src, err)
		}
	}
}
