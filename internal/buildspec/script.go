package buildspec

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-ci/kiln/internal/pipeline"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// StepKey is the key of the one step a buildspec becomes.
const StepKey = "buildspec"

// Step returns the buildspec as one Kiln step: its single command is the
// script of Script, Env is env.variables, Artifacts and Junit the globs of
// the artifacts and JUnit report groups.
func (s *Spec) Step() *kilnv1.StepSpec {
	st := &kilnv1.StepSpec{
		Key:      StepKey,
		Name:     StepKey,
		Commands: []string{s.Script()},
		Retry:    &kilnv1.RetryPolicy{OnAgentLost: pipeline.DefaultAgentLostRetries},
	}
	if len(s.Variables) > 0 {
		st.Env = maps.Clone(s.Variables)
	}
	st.Secrets = slices.Clone(s.Secrets)
	if s.Artifacts != nil {
		st.Artifacts = append([]string(nil), s.Artifacts.Globs...)
	}
	for _, r := range s.Reports {
		if r.FileFormat == "JUNITXML" {
			st.Junit = append(st.Junit, r.Globs...)
		}
	}
	return st
}

// runtime is the fixed part of the script: helpers shared by every
// buildspec. It is POSIX sh (bash and dash run it alike).
const runtime = `set +e
_bs_done=0 _bs_code=0 _bs_pc=0 _bs_abort= _bs_first= _bs_stage= _bs_skip=0
_bs_phase= _bs_of= _bs_defabort=0 _bs_prc=0 _bs_frc=0 _bs_kind=cmd _bs_c= _bs_d=
CODEBUILD_BUILD_SUCCEEDING=1; export CODEBUILD_BUILD_SUCCEEDING
if [ -z "${CODEBUILD_SRC_DIR:-}" ]; then CODEBUILD_SRC_DIR=$PWD; export CODEBUILD_SRC_DIR; fi
# CodeBuild's build and source variables, from what Kiln knows (KILN_*);
# set ones are kept. Webhook variables are set for push builds only.
: "${CODEBUILD_BUILD_ID:=${KILN_BUILD_NAME:-kiln}:${KILN_BUILD_ID:-}}" "${CODEBUILD_BUILD_NUMBER:=${KILN_BUILD_NUMBER:-}}"
: "${CODEBUILD_RESOLVED_SOURCE_VERSION:=${KILN_COMMIT:-}}" "${CODEBUILD_SOURCE_VERSION:=${KILN_BRANCH:-${KILN_TAG:-${KILN_COMMIT:-}}}}"
: "${CODEBUILD_SOURCE_REPO_URL:=${KILN_REPO:-}}" "${CODEBUILD_INITIATOR:=kiln}"
export CODEBUILD_BUILD_ID CODEBUILD_BUILD_NUMBER CODEBUILD_RESOLVED_SOURCE_VERSION CODEBUILD_SOURCE_VERSION CODEBUILD_SOURCE_REPO_URL CODEBUILD_INITIATOR
if [ "${KILN_EVENT:-}" = push ]; then
  if [ -n "${KILN_TAG:-}" ]; then _bs_ref=refs/tags/$KILN_TAG _bs_trig=tag/$KILN_TAG; else _bs_ref=refs/heads/${KILN_BRANCH:-} _bs_trig=branch/${KILN_BRANCH:-}; fi
  : "${CODEBUILD_WEBHOOK_EVENT:=PUSH}" "${CODEBUILD_WEBHOOK_HEAD_REF:=$_bs_ref}" "${CODEBUILD_WEBHOOK_TRIGGER:=$_bs_trig}"
  export CODEBUILD_WEBHOOK_EVENT CODEBUILD_WEBHOOK_HEAD_REF CODEBUILD_WEBHOOK_TRIGGER
fi
_bs_say() { printf '[buildspec] %s\n' "$*"; }
_bs_traps() {
  trap '_bs_rc=$?; eval "$_bs_onexit"' EXIT
  trap '_bs_term 129' HUP
  trap '_bs_term 130' INT
  trap '_bs_term 143' TERM
}
_bs_term() {
  _bs_say "terminated by a signal"
  _bs_done=1 _bs_code=$1
  exit "$1"
}
# _bs_begin PHASE ON_FAILURE DEFAULT_ABORT starts a phase, or skips it after
# an aborting failure.
_bs_begin() {
  _bs_phase=$1 _bs_of=$2 _bs_defabort=$3 _bs_prc=0 _bs_frc=0 _bs_skip=0
  if [ -n "$_bs_abort" ]; then
    _bs_skip=1
    _bs_say "phase $1 skipped ($_bs_abort failed)"
    return 0
  fi
  _bs_say "phase $1"
}
_bs_finally() {
  if [ "$_bs_skip" = 0 ]; then _bs_say "phase $_bs_phase finally"; fi
}
# _bs_pre succeeds when the command in _bs_c is to run: its phase runs and
# its block (commands or finally, _bs_kind) has not failed yet.
_bs_pre() {
  if [ "$_bs_skip" = 1 ]; then return 1; fi
  if [ "$_bs_kind" = cmd ] && [ "$_bs_prc" != 0 ]; then return 1; fi
  if [ "$_bs_kind" = fin ] && [ "$_bs_frc" != 0 ]; then return 1; fi
  _bs_say "running: $_bs_d"
  _bs_stage=run
}
# _bs_post STATUS records the command's result and restores the options
# and traps the command may have changed.
_bs_post() {
  set +e
  _bs_stage=
  _bs_traps
  _bs_result "$1"
}
_bs_result() {
  if [ "$1" = 0 ]; then return 0; fi
  _bs_say "command failed (exit $1): $_bs_d"
  CODEBUILD_BUILD_SUCCEEDING=0; export CODEBUILD_BUILD_SUCCEEDING
  if [ "$_bs_kind" = fin ]; then _bs_frc=$1; else _bs_prc=$1; fi
}
_bs_end() {
  if [ "$_bs_skip" = 1 ]; then return 0; fi
  _bs_rc=$_bs_prc
  if [ "$_bs_rc" = 0 ]; then _bs_rc=$_bs_frc; fi
  if [ "$_bs_rc" = 0 ]; then
    _bs_say "phase $_bs_phase succeeded"
    return 0
  fi
  _bs_say "phase $_bs_phase failed (exit $_bs_rc)"
  if [ -z "$_bs_first" ]; then
    _bs_first="$_bs_phase failed (exit $_bs_rc)" _bs_code=$_bs_rc
  fi
  case $_bs_of in
    CONTINUE) ;;
    ABORT) _bs_abort=$_bs_phase ;;
    *) if [ "$_bs_defabort" = 1 ]; then _bs_abort=$_bs_phase; fi ;;
  esac
}
# _bs_onexit runs when the shell exits. After _bs_finish it keeps the exit
# status. When a command exited the shell (exit N, or set -e and a failing
# line), the command counts as having returned N and the rest of the build
# goes on in a subshell, which inherits the shell's state (directory,
# variables, functions) at the time of the exit. The loop and this handler
# are strings run by eval, not functions, so that a command runs outside
# any function (bash mishandles set -e exits from inside functions).
_bs_onexit='set +e
if [ "$_bs_done" = 1 ]; then exit "$_bs_code"; fi
if [ -z "$_bs_stage" ]; then
  _bs_say "internal error: the script exited (status $_bs_rc) outside a command"
  if [ "$_bs_rc" = 0 ]; then _bs_rc=1; fi
  exit "$_bs_rc"
fi
_bs_stage=
_bs_say "command exited the shell (exit $_bs_rc): $_bs_d"
_bs_result "$_bs_rc"
(_bs_traps; eval "$_bs_loop")
exit $?'
`

// runAsFuncs are the helpers of run-as, POSIX sh. _bs_how USER prints how
// this shell can run commands as USER: "self" (it already is USER),
// "setpriv" (it is root) or "sudo" (sudo -n allows it without a password,
// keeping the environment); otherwise it explains on stderr and fails.
// _bs_as USER HOW COMMAND... runs COMMAND as USER that way, with HOME,
// USER and LOGNAME of USER and the current directory and exported
// variables of this shell.
const runAsFuncs = `_bs_how() {
  if ! _bs_uid=$(id -u "$1" 2>/dev/null); then
    printf '[buildspec] run-as %s: there is no such user where the job runs\n' "$1" >&2
    return 1
  fi
  if [ "$_bs_uid" = "$(id -u)" ]; then echo self; return 0; fi
  if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then echo setpriv; return 0; fi
    printf '[buildspec] run-as %s: the job runs as root but setpriv (util-linux) is not installed where it runs\n' "$1" >&2
    return 1
  fi
  if command -v sudo >/dev/null 2>&1 && sudo -n -E -u "$1" -- true >/dev/null 2>&1; then echo sudo; return 0; fi
  printf '[buildspec] run-as %s: the job runs as uid %s, is not root and may not sudo -n -E -u %s; run the agent (or the job container) as root with setpriv, allow that sudo, or remove run-as\n' "$1" "$(id -u)" "$1" >&2
  return 1
}
_bs_as() {
  _bs_u=$1 _bs_h=$2
  shift 2
  if [ "$_bs_h" = self ]; then "$@"; return $?; fi
  _bs_home=$(getent passwd "$_bs_u" 2>/dev/null | cut -d: -f6)
  _bs_name=$(id -un "$_bs_u" 2>/dev/null || echo "$_bs_u")
  case $_bs_h in
    setpriv) HOME=${_bs_home:-$HOME} USER=$_bs_name LOGNAME=$_bs_name \
      setpriv --reuid="$(id -u "$_bs_u")" --regid="$(id -g "$_bs_u")" --init-groups -- "$@" ;;
    sudo) HOME=${_bs_home:-$HOME} USER=$_bs_name LOGNAME=$_bs_name sudo -n -E -u "$_bs_u" -- "$@" ;;
  esac
}
`

// defaultAbort reports whether a failure of the phase skips the later
// phases when the phase sets no on-failure: INSTALL and PRE_BUILD failures
// go to FINALIZING, a BUILD failure still runs POST_BUILD.
func defaultAbort(phase string) bool {
	return phase == "install" || phase == "pre_build"
}

// Script returns the generated shell script that runs the phases with
// CodeBuild's semantics (see the package documentation). With env.shell
// set, the script re-executes itself with that shell.
func (s *Spec) Script() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by kiln from the CodeBuild buildspec %s.\n", strconv.Quote(s.File))
	b.WriteString(runtime)
	if len(s.ExportedVariables) > 0 {
		// Marked for export before any command: every later assignment
		// reaches the environment of the commands that follow.
		b.WriteString("export " + strings.Join(s.ExportedVariables, " ") + "\n")
	}
	b.WriteString(s.finishFunc())
	// Phase run-as users: checked before the first phase, so that a build
	// the agent cannot run as written fails before running anything.
	users := map[string]string{}
	for _, ph := range s.Phases {
		if ph.RunAs != "" && users[ph.RunAs] == "" {
			users[ph.RunAs] = fmt.Sprintf("_bs_how%d", len(users))
			if len(users) == 1 {
				b.WriteString(runAsFuncs)
			}
			fmt.Fprintf(&b, "%s=$(_bs_how %s) || { _bs_say %s; exit 1; }\n", users[ph.RunAs], shq(ph.RunAs),
				shq("build failed: phases run as "+ph.RunAs+", which is not possible where the job runs"))
		}
	}
	var loop strings.Builder
	loop.WriteString("while :; do\n  _bs_op=$_bs_pc _bs_pc=$((_bs_pc + 1))\n  case $_bs_op in\n")
	pc := 0
	op := func(format string, args ...any) {
		fmt.Fprintf(&loop, "    %d) ", pc)
		fmt.Fprintf(&loop, format, args...)
		loop.WriteString(" ;;\n")
		pc++
	}
	var runAs string
	cmd := func(kind, c string) {
		if runAs == "" {
			op("_bs_kind=%s _bs_c=%s _bs_d=%s\n      if _bs_pre; then eval \"$_bs_c\"; _bs_post $?; fi", kind, shq(c), shq(describe(c)))
			return
		}
		// Another user needs a process of its own; the same user keeps
		// the shared shell.
		how := users[runAs]
		op("_bs_kind=%s _bs_c=%s _bs_d=%s\n      if _bs_pre; then if [ \"$%s\" = self ]; then eval \"$_bs_c\"; "+
			"else _bs_as %s \"$%s\" \"${BASH:-/bin/sh}\" -c \"$_bs_c\"; fi; _bs_post $?; fi",
			kind, shq(c), shq(describe(c)), how, shq(runAs), how)
	}
	for _, ph := range s.Phases {
		runAs = ph.RunAs
		abort := "0"
		if defaultAbort(ph.Name) {
			abort = "1"
		}
		op("_bs_begin %s %s %s", ph.Upper(), shq(ph.OnFailure), abort)
		for _, c := range ph.Commands {
			cmd("cmd", c)
		}
		if len(ph.Finally) > 0 {
			op("_bs_finally")
			for _, c := range ph.Finally {
				cmd("fin", c)
			}
		}
		op("_bs_end")
	}
	loop.WriteString("    *) _bs_finish; exit \"$_bs_code\" ;;\n  esac\ndone")
	b.WriteString("_bs_loop=" + shq(loop.String()) + "\n_bs_traps\neval \"$_bs_loop\"\n")
	body := b.String()
	switch s.Shell {
	case "bash":
		body = "if command -v bash >/dev/null 2>&1; then\n  exec bash -c " + shq(body) + " buildspec\nfi\n" +
			"echo '[buildspec] env.shell is bash, but bash is not installed on this agent' >&2\nexit 127\n"
	case "sh":
		body = "exec /bin/sh -c " + shq(body) + " buildspec\n"
	}
	if s.RunAs == "" {
		return body
	}
	// Top-level run-as: the whole script runs as the user, or the build
	// fails at once with the reason (known only on the agent).
	return "# run-as " + s.RunAs + "\n_bs_say() { printf '[buildspec] %s\\n' \"$*\"; }\n" + runAsFuncs +
		"if ! _bs_h=$(_bs_how " + shq(s.RunAs) + "); then\n  _bs_say " + shq("build failed: run-as "+s.RunAs+" is not possible where the job runs") +
		"\n  exit 1\nfi\n_bs_say \"running as " + s.RunAs + " ($_bs_h)\"\n" +
		"_bs_as " + shq(s.RunAs) + " \"$_bs_h\" /bin/sh -c " + shq(body) + " buildspec\nexit $?\n"
}

// finishFunc returns the shell function run once after the last phase:
// it copies reports from absolute base directories into the workspace,
// prints the exported variables and the build's result.
func (s *Spec) finishFunc() string {
	var b strings.Builder
	b.WriteString("_bs_finish() {\n")
	for _, r := range s.Reports {
		if r.CopyTo == "" || r.FileFormat != "JUNITXML" {
			continue
		}
		fmt.Fprintf(&b, "  if [ -d %[1]s ]; then\n    _bs_say %[3]s\n    mkdir -p \"$CODEBUILD_SRC_DIR\"/%[2]s && cp -R %[1]s/. \"$CODEBUILD_SRC_DIR\"/%[2]s/ "+
			"|| _bs_say %[4]s\n  else\n    _bs_say %[5]s\n  fi\n",
			shq(r.BaseDirectory), shq(r.CopyTo),
			shq("reports "+r.Group+": copying "+r.BaseDirectory+" to "+r.CopyTo+" in the workspace"),
			shq("reports "+r.Group+": could not copy "+r.BaseDirectory),
			shq("reports "+r.Group+": "+r.BaseDirectory+" does not exist"))
	}
	for _, v := range s.ExportedVariables {
		fmt.Fprintf(&b, "  if [ -n \"${%[1]s+x}\" ]; then _bs_say \"exported variable %[1]s=$%[1]s\"; fi\n", v)
	}
	b.WriteString(`  if [ -n "$_bs_first" ]; then
    _bs_say "build failed: $_bs_first"
  else
    _bs_say "build succeeded"
  fi
  _bs_done=1
}
`)
	return b.String()
}

// describe shortens a command for the log: its first line, with " ..." when
// more follows.
func describe(c string) string {
	c = strings.TrimSpace(c)
	line, _, multi := strings.Cut(c, "\n")
	line = strings.TrimRight(line, "\r")
	if r := []rune(line); len(r) > 200 {
		line, multi = string(r[:200]), true
	}
	if multi {
		line += " ..."
	}
	return line
}

// shq quotes s for a POSIX shell.
func shq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
