// Package pipeline parses Kiln pipeline files (.kiln.yaml) into build steps.
//
// A pipeline file is YAML:
//
//	name: my-app               # optional
//	env: {K: V}                # build-wide environment
//	agents: {os: linux}        # default agent label selector for steps
//	timeout: 30m               # default step timeout (Go duration)
//	retry: {on_agent_lost: 1, on_failure: 0}   # default retry policy
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
//	steps: [...]               # shorthand for one stage; exclusive with stages
//
// Parse reports every problem at once, each with file:line:column, and
// rejects unknown keys so that typos never pass silently. The parser walks
// the yaml.v3 node tree itself (rather than decoding into structs) to keep
// positions and to let the language grow key by key.
package pipeline

import (
	"maps"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Limits on pipeline files.
const (
	// MaxFileSize is the largest pipeline file accepted, in bytes.
	MaxFileSize = 1 << 20
	// MaxSteps is the largest number of steps in one pipeline.
	MaxSteps = 500
	// MaxRetries bounds each retry count.
	MaxRetries = 100
	// maxErrors bounds the problems reported for one file.
	maxErrors = 100
)

// DefaultAgentLostRetries is the retry.on_agent_lost of a step that sets it
// nowhere (neither on the step nor in the pipeline's retry defaults).
const DefaultAgentLostRetries = 1

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
	// Stages run in order. A file using the top-level steps shorthand has
	// one stage with an empty name.
	Stages []*Stage
}

// Stage is a group of steps that run in parallel.
type Stage struct {
	Name  string
	Steps []*Step
}

// Step is one step as written in the file, before defaults.
type Step struct {
	Key      string
	Name     string
	Commands []string
	Agents   map[string]string
	Env      map[string]string
	// Timeout is 0 when the step does not set one.
	Timeout time.Duration
	Retry   Retry
	// Line and Column locate the step in the file.
	Line, Column int
}

// Retry is a retry policy as written; a nil field was not set.
type Retry struct {
	OnAgentLost *int32
	OnFailure   *int32
}

// NumSteps returns the number of steps in every stage.
func (p *Pipeline) NumSteps() int {
	n := 0
	for _, s := range p.Stages {
		n += len(s.Steps)
	}
	return n
}

// Steps returns the steps of every stage in order, with the pipeline's
// defaults applied: name defaults to the key, the agent selector is the
// pipeline's merged with the step's, timeout and retry fall back to the
// pipeline's (retry.on_agent_lost to DefaultAgentLostRetries when set
// nowhere), and Stage is the index of the step's stage. StepSpec.Env holds
// the step's own environment only; Pipeline.Env is the build's.
func (p *Pipeline) Steps() []*kilnv1.StepSpec {
	out := make([]*kilnv1.StepSpec, 0, p.NumSteps())
	for si, stage := range p.Stages {
		for _, st := range stage.Steps {
			spec := &kilnv1.StepSpec{
				Key:      st.Key,
				Name:     st.Name,
				Commands: append([]string(nil), st.Commands...),
				Stage:    int32(si),
			}
			if spec.Name == "" {
				spec.Name = st.Key
			}
			if len(p.Agents) > 0 || len(st.Agents) > 0 {
				spec.Agents = make(map[string]string, len(p.Agents)+len(st.Agents))
				maps.Copy(spec.Agents, p.Agents)
				maps.Copy(spec.Agents, st.Agents)
			}
			if len(st.Env) > 0 {
				spec.Env = maps.Clone(st.Env)
			}
			timeout := st.Timeout
			if timeout == 0 {
				timeout = p.Timeout
			}
			spec.TimeoutMs = timeout.Milliseconds()
			spec.Retry = &kilnv1.RetryPolicy{
				OnAgentLost: pick(st.Retry.OnAgentLost, p.Retry.OnAgentLost, DefaultAgentLostRetries),
				OnFailure:   pick(st.Retry.OnFailure, p.Retry.OnFailure, 0),
			}
			out = append(out, spec)
		}
	}
	return out
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

// Validate parses a pipeline file and reports only whether it is valid; the
// error is an *Errors listing every problem.
func Validate(filename string, data []byte) error {
	_, err := Parse(filename, data)
	return err
}
