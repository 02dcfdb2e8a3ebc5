package buildspec

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// shells returns the shells the agent may run the script with: bash, and
// /bin/sh when it is not bash (dash on Debian).
func shells(t *testing.T) []string {
	t.Helper()
	var out []string
	if p, err := exec.LookPath("bash"); err == nil {
		out = append(out, p)
	}
	if target, err := filepath.EvalSymlinks("/bin/sh"); err == nil && filepath.Base(target) != "bash" {
		out = append(out, "/bin/sh")
	}
	if len(out) == 0 {
		t.Skip("no shell")
	}
	return out
}

// runSpec parses src, runs its step's script the way the agent does (shell
// -e -c, in a fresh workspace, with the step's env) and returns the output
// without the "running:" lines, and the exit status.
func runSpec(t *testing.T, shell, src string) (string, int) {
	t.Helper()
	s, _, err := Parse("buildspec.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	st := s.Step()
	ws := t.TempDir()
	cmd := exec.Command(shell, "-e", "-c", strings.Join(st.Commands, "\n"))
	cmd.Dir = ws
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + ws}
	for k, v := range st.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if !strings.HasPrefix(l, "[buildspec] running: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n"), code
}

// The phase semantics table: each case runs under every shell.
var semantics = []struct {
	name string
	src  string
	out  string
	code int
}{
	{
		name: "all phases pass",
		src: `version: 0.2
phases:
  install: {commands: [echo i]}
  pre_build: {commands: [echo p]}
  build: {commands: [echo b]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase INSTALL
i
[buildspec] phase INSTALL succeeded
[buildspec] phase PRE_BUILD
p
[buildspec] phase PRE_BUILD succeeded
[buildspec] phase BUILD
b
[buildspec] phase BUILD succeeded
[buildspec] phase POST_BUILD
q
[buildspec] phase POST_BUILD succeeded
[buildspec] build succeeded`,
	},
	{
		name: "install fails: later phases skipped, its finally runs",
		src: `version: 0.2
phases:
  install:
    commands:
      - echo one
      - sh -c 'exit 4'
      - echo not run
    finally:
      - echo install finally
  pre_build: {commands: [echo p], finally: [echo p finally]}
  build: {commands: [echo b]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase INSTALL
one
[buildspec] command failed (exit 4): sh -c 'exit 4'
[buildspec] phase INSTALL finally
install finally
[buildspec] phase INSTALL failed (exit 4)
[buildspec] phase PRE_BUILD skipped (INSTALL failed)
[buildspec] phase BUILD skipped (INSTALL failed)
[buildspec] phase POST_BUILD skipped (INSTALL failed)
[buildspec] build failed: INSTALL failed (exit 4)`,
		code: 4,
	},
	{
		name: "pre_build fails: build and post_build skipped",
		src: `version: 0.2
phases:
  pre_build: {commands: ["false"]}
  build: {commands: [echo b]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase PRE_BUILD
[buildspec] command failed (exit 1): false
[buildspec] phase PRE_BUILD failed (exit 1)
[buildspec] phase BUILD skipped (PRE_BUILD failed)
[buildspec] phase POST_BUILD skipped (PRE_BUILD failed)
[buildspec] build failed: PRE_BUILD failed (exit 1)`,
		code: 1,
	},
	{
		name: "build fails: post_build still runs and sees the failure",
		src: `version: 0.2
phases:
  build:
    commands:
      - exit 2
    finally:
      - echo "finally succeeding=$CODEBUILD_BUILD_SUCCEEDING"
  post_build:
    commands:
      - echo "post succeeding=$CODEBUILD_BUILD_SUCCEEDING"
`,
		out: `[buildspec] phase BUILD
[buildspec] command exited the shell (exit 2): exit 2
[buildspec] command failed (exit 2): exit 2
[buildspec] phase BUILD finally
finally succeeding=0
[buildspec] phase BUILD failed (exit 2)
[buildspec] phase POST_BUILD
post succeeding=0
[buildspec] phase POST_BUILD succeeded
[buildspec] build failed: BUILD failed (exit 2)`,
		code: 2,
	},
	{
		name: "on-failure CONTINUE goes on, the build still fails",
		src: `version: 0.2
phases:
  install:
    on-failure: CONTINUE
    commands: ["false", echo not run]
  pre_build:
    on-failure: CONTINUE
    commands: ["sh -c 'exit 5'"]
  build: {commands: [echo b]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase INSTALL
[buildspec] command failed (exit 1): false
[buildspec] phase INSTALL failed (exit 1)
[buildspec] phase PRE_BUILD
[buildspec] command failed (exit 5): sh -c 'exit 5'
[buildspec] phase PRE_BUILD failed (exit 5)
[buildspec] phase BUILD
b
[buildspec] phase BUILD succeeded
[buildspec] phase POST_BUILD
q
[buildspec] phase POST_BUILD succeeded
[buildspec] build failed: INSTALL failed (exit 1)`,
		code: 1,
	},
	{
		name: "on-failure ABORT in build skips post_build",
		src: `version: 0.2
phases:
  build: {on-failure: ABORT, commands: ["false"], finally: [echo cleanup]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase BUILD
[buildspec] command failed (exit 1): false
[buildspec] phase BUILD finally
cleanup
[buildspec] phase BUILD failed (exit 1)
[buildspec] phase POST_BUILD skipped (BUILD failed)
[buildspec] build failed: BUILD failed (exit 1)`,
		code: 1,
	},
	{
		name: "a failing finally fails the phase and stops the rest of the finally block",
		src: `version: 0.2
phases:
  build: {commands: [echo b], finally: [echo f1, "false", echo f3]}
  post_build: {commands: [echo q]}
`,
		out: `[buildspec] phase BUILD
b
[buildspec] phase BUILD finally
f1
[buildspec] command failed (exit 1): false
[buildspec] phase BUILD failed (exit 1)
[buildspec] phase POST_BUILD
q
[buildspec] phase POST_BUILD succeeded
[buildspec] build failed: BUILD failed (exit 1)`,
		code: 1,
	},
	{
		name: "post_build failure fails the build",
		src: `version: 0.2
phases:
  build: {commands: [echo b]}
  post_build: {commands: ["exit 9"]}
`,
		out: `[buildspec] phase BUILD
b
[buildspec] phase BUILD succeeded
[buildspec] phase POST_BUILD
[buildspec] command exited the shell (exit 9): exit 9
[buildspec] command failed (exit 9): exit 9
[buildspec] phase POST_BUILD failed (exit 9)
[buildspec] build failed: POST_BUILD failed (exit 9)`,
		code: 9,
	},
	{
		name: "cd, variables and env persist across commands and phases",
		src: `version: 0.2
env:
  variables:
    GREETING: "hello, world"
    EMPTY: ""
phases:
  install:
    commands:
      - mkdir -p a/b && cd a
      - cd b
      - LOCAL=kept
      - export EXPORTED=also
      - greet() { echo "fn:$1"; }
  build:
    commands:
      - echo "dir=$(basename "$PWD") parent=$(basename "$(dirname "$PWD")")"
      - echo "$GREETING|$EMPTY|$LOCAL|$EXPORTED"
      - greet x
      - test "$CODEBUILD_SRC_DIR/a/b" = "$PWD" && echo src-dir-ok
`,
		out: `[buildspec] phase INSTALL
[buildspec] phase INSTALL succeeded
[buildspec] phase BUILD
dir=b parent=a
hello, world||kept|also
fn:x
src-dir-ok
[buildspec] phase BUILD succeeded
[buildspec] build succeeded`,
	},
	{
		name: "tricky commands keep their own semantics",
		src: `version: 0.2
env:
  variables:
    NAME: it's "quoted"
phases:
  build:
    commands:
      - echo 'single $NAME' "double $NAME"
      - "printf '%s\\n' a b c | grep -c . | tr -d ' '"
      - |
        for x in 1 2; do
          echo "loop $x"
        done
        cat <<EOF
        heredoc $NAME
        EOF
      - |
        echo "status of a block is its last line"
        false
        true
      - echo '$(not run)' ` + "`echo backticks`" + ` $((1 + 2))
      - V='a b'; set -- $V; echo "args=$#"
`,
		out: `[buildspec] phase BUILD
single $NAME double it's "quoted"
3
loop 1
loop 2
heredoc it's "quoted"
status of a block is its last line
$(not run) backticks 3
args=2
[buildspec] phase BUILD succeeded
[buildspec] build succeeded`,
	},
	{
		name: "set -e and exit inside commands, twice",
		src: `version: 0.2
phases:
  pre_build:
    on-failure: CONTINUE
    commands:
      - cd /
      - X=before
      - set -e; false; echo not run
    finally:
      - echo "finally in $PWD with X=$X"
  build:
    commands:
      - echo "build after exit, X=$X"
      - exit 0
      - echo exit 0 counts as success
      - exit 6
    finally:
      - echo second finally
`,
		out: `[buildspec] phase PRE_BUILD
[buildspec] command exited the shell (exit 1): set -e; false; echo not run
[buildspec] command failed (exit 1): set -e; false; echo not run
[buildspec] phase PRE_BUILD finally
finally in / with X=before
[buildspec] phase PRE_BUILD failed (exit 1)
[buildspec] phase BUILD
build after exit, X=before
[buildspec] command exited the shell (exit 0): exit 0
exit 0 counts as success
[buildspec] command exited the shell (exit 6): exit 6
[buildspec] command failed (exit 6): exit 6
[buildspec] phase BUILD finally
second finally
[buildspec] phase BUILD failed (exit 6)
[buildspec] build failed: PRE_BUILD failed (exit 1)`,
		code: 1,
	},
}

func TestScriptSemantics(t *testing.T) {
	for _, sh := range shells(t) {
		for _, c := range semantics {
			t.Run(filepath.Base(sh)+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				out, code := runSpec(t, sh, c.src)
				if out != c.out || code != c.code {
					t.Errorf("exit %d, want %d; output:\n%s\nwant:\n%s", code, c.code, out, c.out)
				}
			})
		}
	}
}

func TestScriptShellChoice(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	probe := `[ -n "${BASH_VERSION:-}" ] && echo bash || echo sh`
	for _, sh := range shells(t) {
		for shell, want := range map[string]string{"bash": "bash", "/bin/sh": "sh"} {
			if want == "sh" {
				if target, _ := filepath.EvalSymlinks("/bin/sh"); filepath.Base(target) == "bash" {
					continue // /bin/sh is bash here: nothing to tell apart
				}
			}
			src := "version: 0.2\nenv:\n  shell: " + shell + "\nphases:\n  build:\n    commands:\n      - '" + probe + "'\n"
			out, code := runSpec(t, sh, src)
			if code != 0 || !strings.Contains(out, "\n"+want+"\n") {
				t.Errorf("agent shell %s, env.shell %s: exit %d, output:\n%s", sh, shell, code, out)
			}
		}
	}
}

func TestScriptRealisticFiles(t *testing.T) {
	// The testdata files reference tools the test host may lack; running
	// them must still follow the table: finally.yml's pre_build fails (no
	// docker or no script), its finally runs, build is skipped.
	data, err := os.ReadFile("testdata/finally.yml")
	if err != nil {
		t.Fatal(err)
	}
	out, code := runSpec(t, shells(t)[0], string(data))
	for _, want := range []string{
		"[buildspec] phase PRE_BUILD\n",
		"[buildspec] phase PRE_BUILD finally\n",
		"[buildspec] phase BUILD skipped (PRE_BUILD failed)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code == 0 {
		t.Errorf("exit 0, want a failure:\n%s", out)
	}
}

func TestScriptEmptyItemsAndExportedVariables(t *testing.T) {
	src := `version: 0.2
env:
  exported-variables: [TAG, NEVER_SET]
phases:
  build:
    commands:
      -
      - TAG=v1
      - ""
      - sh -c 'echo "child sees TAG=$TAG"'
  post_build:
    commands:
      - TAG=v2
`
	for _, sh := range shells(t) {
		out, code := runSpec(t, sh, src)
		want := `[buildspec] phase BUILD
child sees TAG=v1
[buildspec] phase BUILD succeeded
[buildspec] phase POST_BUILD
[buildspec] phase POST_BUILD succeeded
[buildspec] exported variable TAG=v2
[buildspec] build succeeded`
		if out != want || code != 0 {
			t.Errorf("%s: exit %d, output:\n%s\nwant:\n%s", sh, code, out, want)
		}
	}
}

// A report group with an absolute base-directory is copied into the
// workspace after the last phase, also when the build failed, where the
// step's JUnit globs find it.
func TestScriptAbsoluteReportDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "reports out")
	src := `version: 0.2
phases:
  build:
    commands:
      - mkdir -p "` + dir + `/sub" && echo '<testsuite/>' > "` + dir + `/sub/unit.xml"
      - exit 3
reports:
  unit:
    files: '**/*.xml'
    base-directory: '` + dir + `'
`
	s, _, err := Parse("buildspec.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Step().Junit; len(got) != 1 || got[0] != ".kiln-buildspec/reports/0/**/*.xml" {
		t.Fatalf("junit globs = %q", got)
	}
	ws := t.TempDir()
	cmd := exec.Command(shells(t)[0], "-e", "-c", s.Step().Commands[0])
	cmd.Dir = ws
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "[buildspec] reports unit: copying "+dir+" to .kiln-buildspec/reports/0 in the workspace\n") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(ws, ".kiln-buildspec/reports/0/sub/unit.xml"))
	if err != nil || string(data) != "<testsuite/>\n" {
		t.Fatalf("copied report: %q, %v", data, err)
	}
}

// run-as with a user the agent cannot become fails at run time, before
// any phase, with the reason; parsing accepted it.
func TestScriptRunAsRefused(t *testing.T) {
	const user = "kiln-no-such-user"
	for _, src := range []string{
		"version: 0.2\nrun-as: " + user + "\nphases:\n  build:\n    commands: [echo ran]\n",
		"version: 0.2\nphases:\n  install:\n    commands: [echo ran]\n  build:\n    run-as: " + user + "\n    commands: [echo ran]\n",
	} {
		for _, sh := range shells(t) {
			out, code := runSpec(t, sh, src)
			if code != 1 || strings.Contains(out, "ran") || strings.Contains(out, "phase ") ||
				!strings.Contains(out, "[buildspec] run-as "+user+": there is no such user where the job runs\n") ||
				!strings.Contains(out, "[buildspec] build failed: ") {
				t.Errorf("%s: exit %d, output:\n%s", sh, code, out)
			}
		}
	}
}

// rootWithSetpriv skips unless the test runs as root with setpriv and a
// nobody user: what run-as needs to switch users without sudo.
func rootWithSetpriv(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("run-as switching is tested as root (setpriv); not root here")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv (util-linux)")
	}
	out, err := exec.Command("id", "-u", "nobody").Output()
	if err != nil {
		t.Skip("no user nobody")
	}
	return strings.TrimSpace(string(out))
}

// run-as really switches users: top-level for the whole script, per phase
// for that phase's commands only. Only id(1) runs as the other user, in a
// temporary workspace; nothing changes owner or mode.
func TestScriptRunAsSwitchesUser(t *testing.T) {
	uid := rootWithSetpriv(t)
	src := `version: 0.2
run-as: nobody
phases:
  build:
    commands:
      - echo "uid=$(id -u) user=$USER"
`
	for _, sh := range shells(t) {
		out, code := runSpec(t, sh, src)
		if code != 0 || !strings.Contains(out, "\nuid="+uid+" user=nobody\n") || !strings.Contains(out, "[buildspec] running as nobody (setpriv)\n") {
			t.Errorf("%s top-level: exit %d, output:\n%s", sh, code, out)
		}
	}
	src = `version: 0.2
env:
  variables: {V: from-env}
phases:
  build:
    run-as: nobody
    commands:
      - echo "build uid=$(id -u) V=$V"
      - exit 4
  post_build:
    commands:
      - echo "post uid=$(id -u)"
`
	for _, sh := range shells(t) {
		out, code := runSpec(t, sh, src)
		if code != 4 || !strings.Contains(out, "\nbuild uid="+uid+" V=from-env\n") || !strings.Contains(out, "\npost uid=0\n") ||
			!strings.Contains(out, "[buildspec] command failed (exit 4): exit 4\n") {
			t.Errorf("%s phase: exit %d, output:\n%s", sh, code, out)
		}
	}
}

// An agent that is neither root nor allowed sudo refuses run-as with a
// message naming what would make it work. The script itself is run as
// nobody (through setpriv) to be such an agent.
func TestScriptRunAsNotRoot(t *testing.T) {
	uid := rootWithSetpriv(t)
	s, _, err := Parse("buildspec.yml", []byte("version: 0.2\nrun-as: root\nphases:\n  build:\n    commands: [echo ran]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups", "--", "/bin/sh", "-e", "-c", s.Step().Commands[0])
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || strings.Contains(string(out), "ran") ||
		!strings.Contains(string(out), "[buildspec] run-as root: the job runs as uid "+uid+", is not root and may not sudo -n -E -u root") {
		t.Errorf("err %v, output:\n%s", err, out)
	}
}
