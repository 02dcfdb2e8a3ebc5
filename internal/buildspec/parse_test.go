package buildspec

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/kiln-ci/kiln/internal/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func load(t *testing.T, name string) (*Spec, []Warning, error) {
	t.Helper()
	path := filepath.Join("testdata", name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return Parse(path, data)
}

func warnStrings(ws []Warning) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.String()
	}
	return out
}

func errStrings(t *testing.T, err error) []string {
	t.Helper()
	var errs *pipeline.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v (%T) is not a *pipeline.Errors", err, err)
	}
	out := make([]string, len(errs.List))
	for i, e := range errs.List {
		out[i] = e.Error()
	}
	return out
}

func sameLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestParseGoService(t *testing.T) {
	s, warns, err := load(t, "go-service.yml")
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, "warnings", warnStrings(warns), []string{
		"testdata/go-service.yml:14:5: warning: phases.install.runtime-versions is ignored: install runtimes in your commands or use an agent with them",
		"testdata/go-service.yml:37:3: warning: artifacts.name is ignored: Kiln stores the artifacts under the build and job",
		"testdata/go-service.yml:47:18: warning: reports.coverage: file-format COBERTURAXML is not supported by Kiln, which reads JUnit XML only; the report is ignored",
	})
	if s.Version != "0.2" || s.Shell != "bash" {
		t.Errorf("version %q shell %q", s.Version, s.Shell)
	}
	if want := map[string]string{"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly", "SERVICE": "orders-api", "RETRIES": "3"}; !mapsEqual(s.Variables, want) {
		t.Errorf("variables = %v", s.Variables)
	}
	var names []string
	for _, p := range s.Phases {
		names = append(names, p.Name)
	}
	sameLines(t, "phases", names, []string{"install", "pre_build", "build", "post_build"})
	if got := s.Phases[2].Commands[1]; !strings.Contains(got, `-ldflags "-s -w -X main.version=$(git describe --always)"`) {
		t.Errorf("build command = %q", got)
	}
	st := s.Step()
	if st.Key != "buildspec" || len(st.Commands) != 1 || st.Env["SERVICE"] != "orders-api" || st.Retry.GetOnAgentLost() != pipeline.DefaultAgentLostRetries {
		t.Errorf("step = %v", st)
	}
	sameLines(t, "artifacts", st.Artifacts, []string{"dist/orders-api", "dist/config/*.yaml"})
	sameLines(t, "junit", st.Junit, []string{"reports/junit.xml"})
	if !strings.HasPrefix(st.Commands[0], "if command -v bash") {
		t.Errorf("env.shell bash: script does not re-exec bash:\n%.200s", st.Commands[0])
	}
}

func TestParseNodeApp(t *testing.T) {
	s, warns, err := load(t, "node-app.yml")
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, "warnings", warnStrings(warns), []string{
		"testdata/node-app.yml:7:3: warning: env.exported-variables: Kiln does not export variables out of the job; they are shell variables, visible to later commands and phases of this job only",
		"testdata/node-app.yml:12:5: warning: phases.install.runtime-versions is ignored: install runtimes in your commands or use an agent with them",
		"testdata/node-app.yml:37:3: warning: artifacts.discard-paths: yes is ignored: Kiln keeps artifacts at their paths in the workspace",
		"testdata/node-app.yml:45:1: warning: cache is not supported by Kiln yet and is ignored: every job starts in a fresh workspace",
	})
	sameLines(t, "exported", s.ExportedVariables, []string{"BUILD_TAG"})
	if s.Shell != "" {
		t.Errorf("shell = %q", s.Shell)
	}
	if got := s.Phases[1].Commands[1]; got != "npm test -- --reporters=default --reporters=jest-junit" {
		t.Errorf("quoted command = %q", got)
	}
	if got := s.Phases[2].Commands[1]; !strings.HasPrefix(got, "if [ ! -f build/index.html ]; then\n") || !strings.HasSuffix(got, "fi\n") {
		t.Errorf("block command = %q", got)
	}
	st := s.Step()
	sameLines(t, "artifacts", st.Artifacts, []string{"build/**/*"})
	sameLines(t, "junit", st.Junit, []string{"junit.xml"})
	if !s.Artifacts.DiscardPaths || s.Reports[0].FileFormat != "JUNITXML" {
		t.Errorf("artifacts %+v reports %+v", s.Artifacts, s.Reports[0])
	}
}

func TestParseContinueAndFinally(t *testing.T) {
	s, warns, err := load(t, "continue.yml")
	if err != nil || len(warns) != 0 {
		t.Fatal(err, warns)
	}
	var ofs []string
	for _, p := range s.Phases {
		ofs = append(ofs, p.Name+"="+p.OnFailure)
	}
	sameLines(t, "on-failure", ofs, []string{"install=CONTINUE", "pre_build=CONTINUE", "build=ABORT", "post_build="})

	s, warns, err = load(t, "finally.yml")
	if err != nil || len(warns) != 0 {
		t.Fatal(err, warns)
	}
	if len(s.Phases) != 2 || s.Phases[0].Upper() != "PRE_BUILD" ||
		!slices.Equal(s.Phases[1].Finally, []string{"docker compose down -v", `echo "cleanup done"`}) {
		t.Errorf("phases = %+v %+v", s.Phases[0], s.Phases[1])
	}
	sameLines(t, "artifacts", s.Step().Artifacts, []string{"db.log"})
}

func TestParseUnsupported(t *testing.T) {
	_, warns, err := load(t, "unsupported.yml")
	const f = "testdata/unsupported.yml"
	sameLines(t, "errors", errStrings(t, err), []string{
		f + `:2:1: run-as is not supported by Kiln (hint: run the commands as the agent's user, or use sudo -u in the commands)`,
		f + `:4:10: env.shell "zsh" is not supported by Kiln (hint: use bash or /bin/sh)`,
		f + `:9:3: env.git-credential-helper is not supported by Kiln (hint: configure git credentials on the agent, or remove the key)`,
		f + `:10:1: batch builds are not supported by Kiln (hint: write a Kiln pipeline file (.kiln.yaml) with several steps instead)`,
		f + `:15:3: unknown key "pre-build" in phases (hint: did you mean "pre_build"?)`,
		f + `:19:5: phases.build.run-as is not supported by Kiln (hint: run the commands as the agent's user, or use sudo -u in the commands)`,
		f + `:20:17: phases.build.on-failure RETRY-2 is not supported by Kiln (hint: use ABORT or CONTINUE; retries of a failed job are set with retry.on_failure in a Kiln pipeline file)`,
		f + `:22:9: phases.build.commands[0] is a mapping, not a command (hint: quote the whole command: YAML reads "key: value" (a colon followed by a space) as a mapping)`,
		f + `:25:17: phases.post_build.on-failure: unknown value "continue" (hint: write it in capitals: CONTINUE)`,
		f + `:30:7: artifacts.files "/etc/passwd" is an absolute path (hint: write it relative to the source directory)`,
		f + `:31:7: artifacts.files "../outside" leaves the workspace (hint: artifacts and reports must be inside the workspace)`,
		f + `:34:3: reports.group has no files (hint: list the report files, such as files: ['**/junit*.xml'])`,
		f + `:35:18: reports.group: unknown file-format "XUNIT" (hint: known formats: JUNITXML, CUCUMBERJSON, TESTNGXML, NUNITXML, NUNIT3XML, VISUALSTUDIOTRX, CLOVERXML, COBERTURAXML, JACOCOXML, SIMPLECOV)`,
	})
	sameLines(t, "warnings", warnStrings(warns), []string{
		f + `:6:5: warning: env.parameter-store.DB_PASSWORD: "/prod/db/password" is not fetched from AWS; the job gets the Kiln secret DB_PASSWORD instead (kilnctl secret set DB_PASSWORD)`,
		f + `:8:5: warning: env.secrets-manager.TOKEN: "prod/token:value" is not fetched from AWS; the job gets the Kiln secret TOKEN instead (kilnctl secret set TOKEN)`,
	})
}

// env.parameter-store and env.secrets-manager name Kiln secrets the job
// gets; a variable may not be set twice.
func TestSecretMappings(t *testing.T) {
	src := "version: 0.2\nenv:\n  variables: {A: x}\n  parameter-store: {P: /p}\n  secrets-manager: {S: 'id:key'}\nphases:\n  build:\n    commands: [make]\n"
	s, warns, err := Parse("f.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Step().GetSecrets(); !slices.Equal(got, []string{"P", "S"}) || len(warns) != 2 {
		t.Fatalf("secrets %v, warnings %v", got, warnStrings(warns))
	}
	for _, bad := range []string{
		"version: 0.2\nenv:\n  variables: {A: x}\n  secrets-manager: {A: id}\nphases:\n  build:\n    commands: [make]\n",
		"version: 0.2\nenv:\n  parameter-store: {A: /a}\n  secrets-manager: {A: id}\nphases:\n  build:\n    commands: [make]\n",
		"version: 0.2\nenv:\n  secrets-manager: {1A: id}\nphases:\n  build:\n    commands: [make]\n",
		"version: 0.2\nenv:\n  secrets-manager: [A]\nphases:\n  build:\n    commands: [make]\n",
	} {
		if _, _, err := Parse("f.yml", []byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestParseVersion(t *testing.T) {
	_, _, err := load(t, "version01.yml")
	sameLines(t, "errors", errStrings(t, err), []string{
		"testdata/version01.yml:1:10: buildspec version 0.1 is not supported by Kiln: it runs every command in a separate shell " +
			"(hint: set version: 0.2; then all commands share one shell, so cd and variables carry over from one command to the next)",
	})
}

func TestParseSmallErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"empty", "", "f.yml:1:1: buildspec is empty (hint: start with version: 0.2 and a phases: section)"},
		{"no version", "phases:\n  build:\n    commands: [make]\n", "f.yml:1:1: buildspec has no version (hint: add version: 0.2 at the top)"},
		{"no phases", "version: 0.2\n", "f.yml:1:1: buildspec has no phases (hint: add a phases: section with at least a build: phase)"},
		{"no commands", "version: 0.2\nphases:\n  build: {}\n", "f.yml:3:3: buildspec has no commands in any phase (hint: add commands: to a phase such as build:)"},
		{"version 1.0", "version: 1.0\nphases: {build: {commands: [make]}}\n", `f.yml:1:10: unsupported buildspec version "1.0"; Kiln runs version 0.2 (hint: set version: 0.2)`},
		{"commands scalar", "version: 0.2\nphases:\n  build:\n    commands: make\n", `f.yml:4:15: phases.build.commands must be a list, not the value "make"`},
		{"bad variable", "version: 0.2\nenv:\n  variables:\n    1X: a\nphases: {build: {commands: [make]}}\n", `f.yml:4:5: invalid variable name "1X" (hint: use letters, digits and '_', not starting with a digit)`},
		{"variable list", "version: 0.2\nenv:\n  variables:\n    X: [a]\nphases: {build: {commands: [make]}}\n", `f.yml:4:8: env.variables.X must be a single value, not a list`},
		{"syntax", "version: 0.2\nphases:\n  build:\n    commands: [make\n", "f.yml:3: invalid YAML: did not find expected ',' or ']'"},
		{"duplicate", "version: 0.2\nphases:\n  build: {commands: [a]}\n  build: {commands: [b]}\n", `f.yml:4:3: duplicate key "build" in phases (first at line 3)`},
		{"typo", "version: 0.2\nphases:\n  build:\n    comands: [make]\n", "f.yml:4:5: unknown key \"comands\" in phases.build (hint: did you mean \"commands\"?)"},
		{"no artifact files", "version: 0.2\nphases: {build: {commands: [make]}}\nartifacts:\n  name: x\n", "f.yml:4:3: artifacts has no files (hint: list the files to keep, such as files: ['**/*'])"},
		{"two docs", "version: 0.2\nphases: {build: {commands: [make]}}\n---\nx: 1\n", "f.yml:3:1: a buildspec holds one YAML document; found another (hint: remove the '---' separator)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := Parse("f.yml", []byte(c.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			got := errStrings(t, err)
			if !slices.Contains(got, c.want) {
				t.Errorf("errors:\n  %s\nwant among them:\n  %s", strings.Join(got, "\n  "), c.want)
			}
		})
	}
}

func TestParseAliasesAndGitHelperNo(t *testing.T) {
	src := "version: 0.2\nenv:\n  git-credential-helper: no\n" +
		"x-common: &setup\n  - echo setup\n" +
		"phases:\n  build:\n    commands: *setup\n"
	_, _, err := Parse("f.yml", []byte(src))
	// x-common is not a buildspec key: typos never pass silently.
	if got := errStrings(t, err); len(got) != 1 || !strings.Contains(got[0], `unknown key "x-common"`) {
		t.Fatalf("errors = %v", got)
	}
	src = "version: 0.2\nenv:\n  git-credential-helper: no\n" +
		"phases:\n  install:\n    commands: &setup\n      - echo setup\n  build:\n    commands: *setup\n"
	s, warns, err := Parse("f.yml", []byte(src))
	if err != nil || len(warns) != 0 {
		t.Fatal(err, warns)
	}
	if !slices.Equal(s.Phases[1].Commands, []string{"echo setup"}) {
		t.Errorf("aliased commands = %q", s.Phases[1].Commands)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
