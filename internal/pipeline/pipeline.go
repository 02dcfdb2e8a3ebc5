// Package pipeline parses Kiln pipeline files (.kiln.yaml) into build steps.
//
// A pipeline file is YAML:
//
//	name: my-app               # optional
//	env: {K: V}                # build-wide environment
//	agents: {os: linux}        # default agent label selector for steps
//	timeout: 30m               # default step timeout (Go duration)
//	retry: {on_agent_lost: 1, on_failure: 0}   # default retry policy
//	concurrency: {group: deploy, limit: 1}      # builds of a group at once
//	artifact_retention: 7d     # keep artifacts 7 days after the build ends
//	stages:                    # run in order
//	  - name: build
//	    steps:                 # run in parallel
//	      - key: compile       # required, [a-z0-9][a-z0-9_.-]*, unique
//	        name: Compile      # default: the key
//	        commands: ["make"] # or command: "one line"
//	        agents: {arch: amd64}   # merged over the default selector
//	        env: {K: V}
//	        timeout: 10m
//	        retry: {on_agent_lost: 1, on_failure: 2}
//	        needs: [other]     # default: every step of the previous stage
//	        allow_failure: true
//	        if: branch == "main" && event != "pull_request"
//	        matrix: {go: ["1.22", "1.23"], os: [linux]}
//	        artifacts: [dist/*]     # or {paths: [...]}
//	        junit: [reports/*.xml]
//	        image: golang:1.23      # run in a container (agents with docker=true)
//	        pull: if-not-present    # or always, never
//	        cpus: 2                 # memory: 2g, user: "1000", network: none
//	        services: [{name: db, image: postgres:16, env: {POSTGRES_PASSWORD: x}}]
//	      - key: codebuild
//	        buildspec: buildspec.yml  # run the source's CodeBuild buildspec (instead of commands)
//	        image: aws/codebuild/standard:7.0
//	      - key: gate
//	        approval: {approvers: [alice], timeout: 72h, prompt: "Ship?"}
//	steps: [...]               # shorthand for one stage; exclusive with stages
//
// docs/pipeline.md describes every key. Parse checks the file, expands
// matrices and resolves needs; Resolve evaluates the if: conditions against
// a submit Context and returns the build's steps.
//
// Parse reports every problem at once, each with file:line:column, and
// rejects unknown keys so that typos never pass silently. The parser walks
// the yaml.v3 node tree itself (rather than decoding into structs) to keep
// positions and to let the language grow key by key.
package pipeline

import (
	"fmt"
	"maps"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Limits on pipeline files.
const (
	// MaxFileSize is the largest pipeline file accepted, in bytes.
	MaxFileSize = 1 << 20
	// MaxSteps is the largest number of steps in one pipeline, counted
	// both as written and after matrix expansion.
	MaxSteps = 500
	// MaxRetries bounds each retry count.
	MaxRetries = 100
	// MaxNeeds bounds the explicit needs of one step, counted after matrix
	// expansion (the implicit needs on the previous stage are not limited).
	MaxNeeds = 100
	// MaxIfLength bounds an if: expression, in bytes.
	MaxIfLength = 1024
	// MaxMatrixAxes bounds the axes of one step's matrix.
	MaxMatrixAxes = 4
	// MaxMatrixCombinations bounds the steps one matrix expands into.
	MaxMatrixCombinations = 64
	// maxErrors bounds the problems reported for one file.
	maxErrors = 100
)

// DefaultAgentLostRetries is the retry.on_agent_lost of a step that sets it
// nowhere (neither on the step nor in the pipeline's retry defaults).
const DefaultAgentLostRetries = 1

// DefaultApprovalTimeout is how long an approval step waits when its
// approval.timeout is not set; the gate is then rejected.
const DefaultApprovalTimeout = 7 * 24 * time.Hour

// Pipeline is a parsed, valid pipeline file.
type Pipeline struct {
	// Name is the pipeline's name; empty when the file has none.
	Name string
	// Env is the build-wide environment (steps' env is merged over it by
	// the cluster when it runs them).
	Env map[string]string
	// Agents is the default agent label selector of the steps.
	Agents map[string]string
	// Timeout is the default step timeout; 0 means the cluster default.
	Timeout time.Duration
	// Retry holds the default retry counts; nil fields were not set.
	Retry Retry
	// Concurrency limits the builds of this pipeline's group that run at
	// once; nil when the file sets none.
	Concurrency *Concurrency
	// ArtifactRetention is how long the build's artifacts are kept after
	// it finishes; 0 when the file sets none (the cluster default).
	ArtifactRetention time.Duration
	// Stages run in order. A file using the top-level steps shorthand has
	// one stage with an empty name.
	Stages []*Stage

	file   string // for positions of problems Resolve finds
	parsed bool   // built by Parse, which reported duplicate keys
}

// Concurrency is the top-level concurrency: key. Builds of the same Group
// beyond Limit running at once wait in a queue.
type Concurrency struct {
	Group string
	// Limit is at least 1 (the default).
	Limit int32
}

// Stage is a group of steps that run in parallel.
type Stage struct {
	Name  string
	Steps []*Step
}

// Step is one step as written in the file, before defaults and before
// matrix expansion.
// ArtifactsFrom names an earlier step (one of the step's needs) and the
// globs of its artifacts to download; no globs means all of them.
type ArtifactsFrom struct {
	Step  string
	Paths []string
	at    pos
}

// Step is one step as written in the file.
type Step struct {
	Key      string
	Name     string
	Commands []string
	Agents   map[string]string
	Env      map[string]string
	// Timeout is 0 when the step does not set one.
	Timeout time.Duration
	Retry   Retry
	// Needs are the step keys this step waits for, as written. nil means
	// the file has no needs: key (the step then waits for every step of the
	// previous stage that has steps, see StageEdges); an empty non-nil list
	// means it waits for nothing.
	Needs        []string
	AllowFailure bool
	// Production marks a step that deploys to production: delivery
	// statistics (kilnctl stats) count its runs as deployments.
	Production bool
	// If is the step's condition as written; empty when it has none.
	If string
	// Matrix maps each axis to its values as written; nil without matrix.
	Matrix map[string][]string
	// Artifacts and JUnit are relative path globs.
	Artifacts []string
	JUnit     []string
	// Secrets are the names of the secrets the step's job receives as
	// environment variables.
	Secrets []string
	// ArtifactsFrom selects the artifacts the step downloads (artifacts:
	// {from: STEP, paths: [...]}); nil means every artifact of its needs.
	ArtifactsFrom *ArtifactsFrom
	// Approval is set for an approval gate (which has no commands).
	Approval *Approval
	// Deploy is set for a deploy step (whose commands are in it).
	Deploy *Deploy
	// Runtime holds the container keys (image, pull, cpus, memory,
	// network, user, services); nil when the step sets none.
	Runtime *kilnv1.StepRuntime
	// Buildspec is the path of a CodeBuild buildspec in the workspace that
	// the agent runs instead of commands; empty when the step has commands.
	Buildspec string
	// Line and Column locate the step in the file.
	Line, Column int

	cond      *Condition // compiled If
	needsPos  []pos      // position of each Needs entry
	needsKey  pos        // position of the needs: key
	matrixPos pos        // position of the matrix: key
}

// Approval is an approval gate as written.
type Approval struct {
	// Approvers may decide; empty means anyone.
	Approvers []string
	// Timeout is 0 when not set (DefaultApprovalTimeout applies).
	Timeout time.Duration
	Prompt  string
}

// Retry is a retry policy as written; a nil field was not set.
type Retry struct {
	OnAgentLost *int32
	OnFailure   *int32
}

// Context is what a build's if: conditions see at submit time.
type Context struct {
	Branch, Tag, Event string
	// Env is the submitter's environment; it wins over the pipeline's env
	// for env.NAME lookups.
	Env map[string]string
}

// NumSteps returns the number of steps after matrix expansion (the number
// of jobs a build of the pipeline has).
func (p *Pipeline) NumSteps() int {
	n := 0
	for _, s := range p.Stages {
		for _, st := range s.Steps {
			if st == nil {
				continue
			}
			n += combinations(st.Matrix)
		}
	}
	return n
}

// Steps returns Resolve(Context{Event: "manual"}) for callers that have no
// submit context; unlike Resolve it returns the steps it could build even
// when the pipeline (built by hand, not by Parse) is invalid.
func (p *Pipeline) Steps() []*kilnv1.StepSpec {
	specs, _ := p.resolve(Context{Event: "manual"})
	return specs
}

// Resolve returns the build's final steps, in stage order and file order
// within a stage (a matrix step's expansions in its place):
//
//   - defaults applied: name defaults to the key, the agent selector is the
//     pipeline's merged with the step's, timeout and retry fall back to the
//     pipeline's (retry.on_agent_lost to DefaultAgentLostRetries when set
//     nowhere), and Stage is the index of the step's stage. StepSpec.Env
//     holds the step's own environment (plus its matrix values); the
//     pipeline's Env is the build's;
//   - matrices expanded (see expandMatrix for the naming rules);
//   - Needs resolved to final keys, sorted and deduplicated;
//   - SkipReason set for steps whose if: is false in ctx, evaluated with
//     env.NAME looked up in the pipeline's Env merged with ctx.Env (ctx
//     wins);
//   - approval steps with Approval set (timeout defaulted), no commands,
//     no agents and an empty retry policy.
//
// The error is an *Errors; a pipeline returned by Parse always resolves.
func (p *Pipeline) Resolve(ctx Context) ([]*kilnv1.StepSpec, error) {
	specs, err := p.resolve(ctx)
	if err != nil {
		return nil, err
	}
	return specs, nil
}

func (p *Pipeline) resolve(ctx Context) ([]*kilnv1.StepSpec, error) {
	pl := p.plan()
	env := make(map[string]string, len(p.Env)+len(ctx.Env))
	maps.Copy(env, p.Env)
	maps.Copy(env, ctx.Env)
	ctx.Env = env
	conds := map[*Step]*Condition{}
	for i, spec := range pl.specs {
		st := pl.from[i]
		if st.If == "" {
			continue
		}
		c, done := conds[st]
		if !done {
			c = st.cond
			if c == nil || c.src != st.If {
				var err error
				if c, err = ParseCondition(st.If); err != nil {
					pl.errs = append(pl.errs, &Error{File: p.file, Line: st.Line, Column: st.Column,
						Msg: fmt.Sprintf("step %q: invalid if expression: %v", st.Key, err)})
					c = nil
				}
			}
			conds[st] = c
		}
		if c != nil && !c.Eval(ctx) {
			spec.SkipReason = "if: " + st.If + " was false"
		}
	}
	if len(pl.errs) > 0 {
		errs := &Errors{List: pl.errs}
		errs.sort()
		return pl.specs, errs
	}
	return pl.specs, nil
}

func pick(step, def *int32, fallback int32) int32 {
	switch {
	case step != nil:
		return *step
	case def != nil:
		return *def
	default:
		return fallback
	}
}
