// Package buildspec runs AWS CodeBuild buildspec files (version 0.2) as a
// one-job Kiln build.
//
// Parse reads the file with the yaml.v3 node API and reports every problem
// at once with file:line:column (as *pipeline.Errors, the same type the Kiln
// pipeline parser returns). Keys Kiln cannot honour are never ignored
// silently: each is either an error or a Warning with its position.
// (*Spec).Step turns the file into ONE StepSpec (key "buildspec") whose
// single command is a generated POSIX shell script that reproduces the
// CodeBuild phase semantics.
//
// # Supported keys
//
//	version: 0.2                  required; 0.1 is an error (it runs every command in its own shell)
//	env:
//	  shell: bash | /bin/sh       sh, /bin/bash are accepted too; anything else is an error
//	  variables: {K: V}           StepSpec.Env (scalars; numbers and booleans keep their text)
//	  exported-variables: [K]     warning: visible to later commands and phases of this job only
//	  parameter-store, secrets-manager   {VAR: ref}: warning; the job gets the Kiln secret VAR (StepSpec.Secrets), AWS is not called
//	  git-credential-helper: yes  error (no is accepted: it changes nothing)
//	phases:
//	  install | pre_build | build | post_build:
//	    on-failure: ABORT | CONTINUE     RETRY[-n[-regex]] is an error
//	    commands: [...]
//	    finally: [...]
//	    runtime-versions: {...}   warning: ignored
//	    run-as: ...               error
//	artifacts: {files, base-directory, discard-paths, name}   StepSpec.Artifacts
//	reports: {group: {files, base-directory, file-format}}    StepSpec.Junit (JUNITXML only)
//	cache, proxy, artifacts.{exclude-paths, enable-symlinks, s3-prefix,
//	secondary-artifacts}: warnings (ignored)
//	run-as, batch: errors
//
// # Phase semantics (reading of the CodeBuild documentation)
//
// The CodeBuild user guide ("Build phase transitions" and the buildspec
// reference) documents, and this package implements:
//
//   - The phases run in the order INSTALL, PRE_BUILD, BUILD, POST_BUILD.
//     Phases missing from the file do not run and print nothing.
//   - Within a phase, the commands run one at a time in order; the first
//     failing command (non-zero exit status) stops the rest of the phase's
//     commands.
//   - The phase's finally commands run after its commands whether they
//     failed or not (also when the first command failed). They too stop at
//     their first failure. A phase that did not start (skipped) runs no
//     finally block.
//   - A phase fails if any of its commands or finally commands failed.
//   - Transitions after a failed phase without on-failure: a failed INSTALL
//     or PRE_BUILD skips every later phase (CodeBuild goes straight to
//     FINALIZING); a failed BUILD still runs POST_BUILD (CodeBuild "runs
//     POST_BUILD as long as BUILD ran", and attempts UPLOAD_ARTIFACTS even
//     when BUILD failed); a failed POST_BUILD has no later phase.
//   - on-failure: CONTINUE goes on to the next phase despite the failure.
//     The phase is still FAILED and so is the build: CONTINUE changes the
//     transition, not the outcome.
//   - on-failure: ABORT ("abort the build") skips every later phase,
//     including POST_BUILD after a failed BUILD.
//   - The build fails (the script exits non-zero) if any phase failed. The
//     exit status is that of the first failed phase.
//
// All commands of all phases share one shell, as in version 0.2: cd,
// variables (exported or not) and functions persist between commands and
// across phases. Each command is run with eval, so a multi-line command,
// pipes and quoting keep their own shell semantics; as in CodeBuild, the
// status of a multi-line command is that of its last line unless the
// command itself uses set -e. Shell options a command sets (set -e, set -x)
// are reset after it, so that they cannot break the phase bookkeeping. A
// command that exits the shell (exit N, or set -e with a failing line)
// fails with status N (succeeds when N is 0) and the script goes on with
// the next step as if the command had returned N: the rest of the build
// then continues in a subshell that keeps the state at the time of exit.
//
// Like CodeBuild, the script sets CODEBUILD_BUILD_SUCCEEDING (1, then 0 from
// the first failed command on, so a finally block and POST_BUILD can test it) and CODEBUILD_SRC_DIR (the workspace, unless already set).
//
// The log shows a marker line per event:
//
//	[buildspec] phase INSTALL
//	[buildspec] running: npm ci
//	[buildspec] command failed (exit 1): npm ci
//	[buildspec] phase INSTALL finally
//	[buildspec] phase INSTALL failed (exit 1)
//	[buildspec] phase BUILD skipped (INSTALL failed)
//	[buildspec] build failed: INSTALL failed (exit 1)
//
// # Artifacts and reports
//
// artifacts.files become StepSpec.Artifacts globs relative to the workspace,
// joined to base-directory. Kiln keeps the matched files at their paths, so
// discard-paths: yes is accepted with a warning, as is name (Kiln stores
// artifacts per job). reports groups with file-format JUNITXML (the
// default) become StepSpec.Junit globs; other formats are ignored with a
// warning.
package buildspec
