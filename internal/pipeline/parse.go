package pipeline

import (
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/role"
	"github.com/kiln-ci/kiln/internal/yamlpos"
)

// Keys known at each level of the file. Adding a key to the language means
// adding it here and handling it in the matching function below.
var (
	pipelineKeys = []string{"name", "env", "agents", "timeout", "retry", "concurrency", "artifact_retention", "stages", "steps"}
	stageKeys    = []string{"name", "steps"}
	stepKeys     = []string{"key", "name", "command", "commands", "agents", "env", "timeout", "retry", "needs", "allow_failure", "if", "matrix", "artifacts", "junit", "approval",
		"secrets", "production", "deploy", "image", "pull", "cpus", "memory", "network", "user", "services", "buildspec"}
	retryKeys       = []string{"on_agent_lost", "on_failure"}
	concurrencyKeys = []string{"group", "limit"}
	approvalKeys    = []string{"approvers", "timeout", "prompt"}
	artifactsKeys   = []string{"paths", "from"}
	// approvalStepKeys are the step keys that apply to an approval step.
	approvalStepKeys = []string{"key", "name", "needs", "if", "approval"}
)

var (
	stepKeyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	axisRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
	driveRE   = regexp.MustCompile(`^[A-Za-z]:`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// maxKeyLen bounds step keys (they become parts of job ids and paths);
// maxNameLen bounds concurrency groups and approver names.
const (
	maxKeyLen  = 100
	maxNameLen = 100
)

// Parse parses a pipeline file. filename is used in error positions only.
// When the file is invalid the error is an *Errors holding every problem
// found, each with file:line:column.
func Parse(filename string, data []byte) (*Pipeline, error) {
	p := &parser{file: filename, data: data, keys: map[string]*yaml.Node{}}
	if len(data) > MaxFileSize {
		p.add(&Error{File: filename,
			Msg:  fmt.Sprintf("file is %d bytes, larger than the limit of %d bytes (1 MiB)", len(data), MaxFileSize),
			Hint: "split the pipeline or move data out of the file"})
		return nil, p.result()
	}
	root := yamlpos.Decode(data, p.syntaxError, func(extra *yaml.Node) {
		p.errorf(extra, "remove the '---' separator or split the file",
			"a pipeline file holds one YAML document; found another")
	})
	if root == nil {
		if len(p.errs) == 0 {
			p.add(&Error{File: filename, Line: 1, Column: 1, Msg: "pipeline has no steps",
				Hint: "add a steps: or stages: list"})
		}
		return nil, p.result()
	}
	pl := p.pipeline(root)
	if pl != nil {
		pl.file, pl.parsed = filename, true
		if p.steps <= MaxSteps {
			for _, e := range pl.plan().errs {
				p.add(e)
			}
		}
	}
	if err := p.result(); err != nil {
		return nil, err
	}
	return pl, nil
}

// parser collects problems while walking the node tree.
type parser struct {
	file      string
	data      []byte
	lines     []string // data split into lines, when needed
	errs      []*Error
	truncated bool
	steps     int
	keys      map[string]*yaml.Node // step key -> its value node
}

func (p *parser) add(e *Error) {
	if len(p.errs) >= maxErrors {
		p.truncated = true
		return
	}
	p.errs = append(p.errs, e)
}

// errorf records a problem at node n.
func (p *parser) errorf(n *yaml.Node, hint, format string, args ...any) {
	e := &Error{File: p.file, Msg: fmt.Sprintf(format, args...), Hint: hint}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	p.add(e)
}

func (p *parser) result() error {
	if len(p.errs) == 0 {
		return nil
	}
	errs := &Errors{List: p.errs}
	errs.sort()
	if p.truncated {
		errs.List = append(errs.List, &Error{File: p.file,
			Msg: fmt.Sprintf("too many errors; only the first %d are shown", maxErrors)})
	}
	return errs
}

// syntaxError records a YAML syntax error. The library reports a line but
// no column, so the column is left out.
func (p *parser) syntaxError(line int, msg string) {
	p.add(&Error{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

// fields checks that n is a mapping whose keys are unique and known, and
// returns its known fields by name. what names the mapping in messages.
// It returns nil (after recording the problem) when n is not a mapping.
func (p *parser) fields(n *yaml.Node, what string, known []string) map[string]yamlpos.Field {
	if !p.isKind(n, yaml.MappingNode, what, false) {
		return nil
	}
	return yamlpos.Fields(n, yamlpos.Keys{
		What:          what,
		Known:         known,
		NonScalarHint: "keys are plain words such as " + strconv.Quote(known[0]),
	}, p.errorf)
}

// isKind checks n's kind. With nullOK a null scalar is accepted as empty
// (the caller then sees no content).
func (p *parser) isKind(n *yaml.Node, kind yaml.Kind, what string, nullOK bool) bool {
	if n.Kind == yaml.AliasNode {
		p.errorf(n, "repeat the value instead", "YAML aliases (*%s) are not supported", n.Value)
		return false
	}
	if nullOK && yamlpos.IsNull(n) {
		return true
	}
	if n.Kind != kind {
		want := "a mapping"
		if kind == yaml.SequenceNode {
			want = "a list"
		}
		p.errorf(n, "", "%s must be %s, not %s", what, want, yamlpos.KindName(n))
		return false
	}
	return true
}

func (p *parser) pipeline(root *yaml.Node) *Pipeline {
	f := p.fields(root, "the pipeline", pipelineKeys)
	if f == nil {
		return nil
	}
	pl := &Pipeline{}
	if x, ok := f["name"]; ok {
		pl.Name, _ = p.str(x.Val, "name")
	}
	if x, ok := f["env"]; ok {
		pl.Env = p.env(x.Val, "env")
	}
	if x, ok := f["agents"]; ok {
		pl.Agents = p.labels(x.Val, "agents")
	}
	if x, ok := f["timeout"]; ok {
		pl.Timeout = p.duration(x.Val, "timeout")
	}
	if x, ok := f["retry"]; ok {
		pl.Retry = p.retry(x.Val, "retry")
	}
	if x, ok := f["concurrency"]; ok {
		pl.Concurrency = p.concurrency(x.Val)
	}
	if x, ok := f["artifact_retention"]; ok {
		pl.ArtifactRetention = p.retention(x.Val, "artifact_retention")
	}
	stages, hasStages := f["stages"]
	steps, hasSteps := f["steps"]
	switch {
	case hasStages && hasSteps:
		second := steps.Key
		if second.Line < stages.Key.Line {
			second = stages.Key
		}
		p.errorf(second, "steps: is shorthand for a single stage; put the steps under a stage",
			"use either stages or steps, not both")
	case hasStages:
		if p.isKind(stages.Val, yaml.SequenceNode, "stages", true) {
			for _, sn := range stages.Val.Content {
				if st := p.stage(sn, len(pl.Stages)); st != nil {
					pl.Stages = append(pl.Stages, st)
				}
			}
			if len(stages.Val.Content) == 0 {
				p.errorf(stages.Key, "add at least one stage with steps", "stages is empty: the pipeline has no steps")
			}
		}
	case hasSteps:
		st := &Stage{}
		st.Steps = p.stepList(steps.Key, steps.Val, "steps", "the pipeline")
		pl.Stages = []*Stage{st}
	default:
		p.errorf(root, "add a steps: or stages: list", "pipeline has no steps")
	}
	return pl
}

func (p *parser) stage(n *yaml.Node, index int) *Stage {
	what := fmt.Sprintf("stage %d", index+1)
	f := p.fields(n, what, stageKeys)
	if f == nil {
		return nil
	}
	st := &Stage{}
	if x, ok := f["name"]; ok {
		st.Name, _ = p.str(x.Val, "stage name")
		if st.Name != "" {
			what = fmt.Sprintf("stage %q", st.Name)
		}
	}
	x, ok := f["steps"]
	if !ok {
		p.errorf(n, "add a steps: list to the stage", "%s has no steps", what)
		return st
	}
	st.Steps = p.stepList(x.Key, x.Val, "steps", what)
	return st
}

func (p *parser) stepList(key, n *yaml.Node, what, owner string) []*Step {
	if !p.isKind(n, yaml.SequenceNode, what, true) {
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(key, "add at least one step with key: and commands:", "%s has no steps", owner)
		return nil
	}
	var out []*Step
	for _, sn := range n.Content {
		p.steps++
		if p.steps == MaxSteps+1 {
			p.errorf(sn, "split the work into fewer, larger steps",
				"too many steps: a pipeline has at most %d", MaxSteps)
		}
		if st := p.step(sn); st != nil {
			out = append(out, st)
		}
	}
	return out
}

func (p *parser) step(n *yaml.Node) *Step {
	f := p.fields(n, "step", stepKeys)
	if f == nil {
		return nil
	}
	st := &Step{Line: n.Line, Column: n.Column}
	what := "step"
	if x, ok := f["key"]; ok {
		if key, ok := p.str(x.Val, "step key"); ok {
			switch {
			case len(key) > maxKeyLen:
				p.errorf(x.Val, "", "step key is %d characters; the limit is %d", len(key), maxKeyLen)
			case !stepKeyRE.MatchString(key):
				p.errorf(x.Val, "use lower-case letters, digits, '_', '.' and '-', starting with a letter or digit",
					"invalid step key %q", key)
			default:
				if first, dup := p.keys[key]; dup {
					p.errorf(x.Val, "step keys must be unique in the file",
						"duplicate step key %q (first at line %d)", key, first.Line)
				} else {
					p.keys[key] = x.Val
				}
			}
			st.Key = key
			what = fmt.Sprintf("step %q", key)
		}
	} else {
		p.errorf(n, "add key: <name>, e.g. key: build", "step has no key")
	}
	if x, ok := f["name"]; ok {
		st.Name, _ = p.str(x.Val, "step name")
	}
	if _, ok := f["deploy"]; ok {
		if y, ok := f["approval"]; ok {
			p.errorf(y.Key, "make the gate its own step and list it in the deploy step's needs", "a step cannot have both deploy and approval")
		}
		p.deployStep(st, f)
		return st
	}
	if x, ok := f["approval"]; ok {
		st.Approval = p.approval(x.Val)
		for _, k := range stepKeys {
			y, set := f[k]
			if !set || slices.Contains(approvalStepKeys, k) {
				continue
			}
			hint := "remove it"
			switch k {
			case "command", "commands":
				hint = "an approval step has no commands; put them in a step that needs this one"
			case "timeout":
				hint = "set approval.timeout instead"
			}
			p.errorf(y.Key, hint, "%s does not apply to an approval step", k)
		}
		if st.Approval == nil {
			st.Approval = &Approval{}
		}
		p.stepCommon(st, f)
		return st
	}
	cmd, hasCmd := f["command"]
	cmds, hasCmds := f["commands"]
	if x, ok := f["buildspec"]; ok {
		st.Buildspec = p.buildspecPath(x.Val)
		if st.Buildspec == "" {
			st.Buildspec = "buildspec.yml" // reported; keeps "has no commands" quiet
		}
		if hasCmd || hasCmds {
			p.errorf(x.Key, "the buildspec's phases are the step's commands", "use either buildspec or commands, not both")
		}
		hasCmd, hasCmds = false, false
	}
	switch {
	case st.Buildspec != "":
		// The agent reads it from the workspace.
	case hasCmd && hasCmds:
		second := cmds.Key
		if second.Line < cmd.Key.Line || (second.Line == cmd.Key.Line && second.Column < cmd.Key.Column) {
			second = cmd.Key
		}
		p.errorf(second, "command: is shorthand for a single-entry commands: list", "use either command or commands, not both")
	case hasCmd:
		if s, ok := p.str(cmd.Val, "command"); ok {
			if strings.TrimSpace(s) == "" {
				p.errorf(cmd.Val, "", "command is empty")
			} else {
				st.Commands = []string{s}
			}
		}
	case hasCmds:
		st.Commands = p.commands(cmds.Key, cmds.Val)
	default:
		p.errorf(n, `add commands: ["..."] or command: "..."`, "%s has no commands", what)
	}
	if x, ok := f["agents"]; ok {
		st.Agents = p.labels(x.Val, "agents")
	}
	if x, ok := f["env"]; ok {
		st.Env = p.env(x.Val, "env")
	}
	if x, ok := f["timeout"]; ok {
		st.Timeout = p.duration(x.Val, "timeout")
	}
	if x, ok := f["retry"]; ok {
		st.Retry = p.retry(x.Val, "retry")
	}
	if x, ok := f["allow_failure"]; ok {
		st.AllowFailure = p.boolean(x.Val, "allow_failure")
	}
	if x, ok := f["production"]; ok {
		st.Production = p.boolean(x.Val, "production")
	}
	if x, ok := f["matrix"]; ok {
		st.matrixPos = posOf(x.Key)
		st.Matrix = p.matrix(x.Key, x.Val, st.Env)
	}
	if x, ok := f["artifacts"]; ok {
		st.Artifacts, st.ArtifactsFrom = p.artifacts(x.Key, x.Val)
	}
	if x, ok := f["junit"]; ok {
		st.JUnit = p.globs(x.Key, x.Val, "junit")
	}
	if x, ok := f["secrets"]; ok {
		st.Secrets = p.secretNames(x.Key, x.Val, st.Env)
	}
	p.runtime(st, f)
	if v, ok := st.Agents[DockerLabel]; ok && v != "true" && st.Runtime.GetImage() != "" {
		p.errorf(f["agents"].Val, "remove the docker label: a step with image: runs on agents labelled docker=true",
			"agents selects docker=%s, but a step with an image needs docker=true", v)
	}
	p.stepCommon(st, f)
	return st
}

// stepCommon parses the keys shared by approval and command steps.
func (p *parser) stepCommon(st *Step, f map[string]yamlpos.Field) {
	if x, ok := f["needs"]; ok {
		st.needsKey = posOf(x.Key)
		st.Needs = []string{}
		if p.isKind(x.Val, yaml.SequenceNode, "needs", true) {
			for _, e := range x.Val.Content {
				if s, ok := p.str(e, "needs entry"); ok {
					st.Needs = append(st.Needs, s)
					st.needsPos = append(st.needsPos, posOf(e))
				}
			}
		}
	}
	if x, ok := f["if"]; ok {
		p.condition(st, x.Val)
	}
}

// condition parses the if: of st, reporting syntax errors at their column
// when the expression can be located in the file.
func (p *parser) condition(st *Step, n *yaml.Node) {
	src, ok := p.str(n, "if")
	if !ok {
		return
	}
	if strings.TrimSpace(src) == "" {
		p.errorf(n, "remove if: to always run the step", "if is empty")
		return
	}
	if len(src) > MaxIfLength {
		p.errorf(n, "", "if expression is %d bytes; the limit is %d", len(src), MaxIfLength)
		return
	}
	c, err := ParseCondition(src)
	if err != nil {
		ce := err.(*CondError)
		line, col, exact := p.locate(n, src, ce.Offset)
		msg := "invalid if expression: " + ce.Msg
		if !exact {
			msg += fmt.Sprintf(" (at character %d)", utf8.RuneCountInString(src[:ce.Offset])+1)
		}
		p.add(&Error{File: p.file, Line: line, Column: col, Msg: msg, Hint: ce.Hint})
		return
	}
	st.If, st.cond = src, c
}

// locate returns the file position of byte offset off of the scalar n
// whose value is src: exact when the value is written on one line as is
// (plain, or single-quoted without doubled quotes), else n's own position.
func (p *parser) locate(n *yaml.Node, src string, off int) (line, col int, exact bool) {
	line, col = n.Line, n.Column
	start := col - 1
	switch n.Style {
	case 0:
	case yaml.SingleQuotedStyle:
		start++
	default:
		return line, col, false
	}
	if p.lines == nil {
		p.lines = strings.Split(string(p.data), "\n")
	}
	if line < 1 || line > len(p.lines) {
		return line, col, false
	}
	r := []rune(p.lines[line-1])
	want := []rune(src)
	if start < 0 || start+len(want) > len(r) || string(r[start:start+len(want)]) != src {
		return line, col, false
	}
	return line, start + 1 + utf8.RuneCountInString(src[:off]), true
}

func (p *parser) boolean(n *yaml.Node, what string) bool {
	if n.Kind == yaml.AliasNode {
		p.isKind(n, yaml.ScalarNode, what, false)
		return false
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.errorf(n, "write true or false", "%s must be a boolean, not %s", what, yamlpos.KindName(n))
		return false
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		p.errorf(n, "write true or false", "%s: invalid boolean %q", what, n.Value)
	}
	return b
}

// matrix parses a step's matrix: axis -> list of scalar values. env is the
// step's own env, which must not set the axes' variables.
func (p *parser) matrix(key, n *yaml.Node, env map[string]string) map[string][]string {
	if !p.isKind(n, yaml.MappingNode, "matrix", false) {
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, "add axes such as go: [\"1.22\", \"1.23\"], or remove matrix:", "matrix is empty")
		return nil
	}
	out := map[string][]string{}
	seen := map[string]*yaml.Node{}
	envOf := map[string]string{}
	combos := 1
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		axis, ok := p.str(k, "matrix axis")
		if !ok {
			continue
		}
		if first, dup := seen[axis]; dup {
			p.errorf(k, "", "duplicate matrix axis %q (first at line %d)", axis, first.Line)
			continue
		}
		seen[axis] = k
		if !axisRE.MatchString(axis) {
			p.errorf(k, "use letters, digits, '_' and '-', starting with a letter or '_'", "invalid matrix axis name %q", axis)
			continue
		}
		if len(seen) > MaxMatrixAxes {
			if len(seen) > MaxMatrixAxes+1 {
				continue // reported at the first extra axis
			}
			p.errorf(k, "split the step, or list the combinations you need as values of one axis",
				"matrix has more than %d axes", MaxMatrixAxes)
			continue
		}
		name := matrixEnvName(axis)
		if other, clash := envOf[name]; clash {
			p.errorf(k, "rename one of the axes", "matrix axes %q and %q both set env %s", other, axis, name)
			continue
		}
		envOf[name] = axis
		if _, clash := env[name]; clash {
			p.errorf(k, "remove "+name+" from the step's env; the matrix sets it", "matrix axis %q sets env %s, which the step's env also sets", axis, name)
			continue
		}
		if v.Kind == yaml.ScalarNode && !yamlpos.IsNull(v) {
			p.errorf(v, fmt.Sprintf("write %s: [%s]", axis, v.Value), "matrix axis %q must be a list of values, not %s", axis, yamlpos.KindName(v))
			continue
		}
		if !p.isKind(v, yaml.SequenceNode, fmt.Sprintf("matrix axis %q", axis), false) {
			continue
		}
		if len(v.Content) == 0 {
			p.errorf(v, "add at least one value", "matrix axis %q has no values", axis)
			continue
		}
		var vals []string
		bySan := map[string]string{}
		for _, e := range v.Content {
			s, ok := p.str(e, "matrix value")
			if !ok {
				continue
			}
			san := sanitizeMatrixValue(s)
			switch first, dup := bySan[san]; {
			case s == "":
				p.errorf(e, "", "matrix value of axis %q is empty", axis)
			case dup && first == s:
				p.errorf(e, "", "duplicate matrix value %q in axis %q", s, axis)
			case dup:
				p.errorf(e, "step keys use values lower-cased with characters outside [a-z0-9_.-] as '_'",
					"matrix values %q and %q of axis %q give the same step key part %q", first, s, axis, san)
			default:
				bySan[san] = s
				vals = append(vals, s)
			}
		}
		if len(vals) == 0 {
			continue
		}
		combos *= len(vals)
		if combos > MaxMatrixCombinations {
			p.errorf(key, "use fewer values, or split the step", "matrix has more than %d combinations", MaxMatrixCombinations)
			return nil
		}
		out[axis] = vals
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// artifacts parses artifacts: [globs] or artifacts: {paths: [globs]}.
func (p *parser) artifacts(key, n *yaml.Node) ([]string, *ArtifactsFrom) {
	if n.Kind != yaml.MappingNode {
		return p.globs(key, n, "artifacts"), nil
	}
	f := p.fields(n, "artifacts", artifactsKeys)
	if f == nil {
		return nil, nil
	}
	if x, ok := f["from"]; ok {
		// Input selection: files of an earlier step this one needs.
		step, ok := p.str(x.Val, "artifacts.from")
		if !ok {
			return nil, nil
		}
		if step == "" {
			p.errorf(x.Val, "name the step whose artifacts this one downloads", "artifacts.from is empty")
			return nil, nil
		}
		from := &ArtifactsFrom{Step: step, at: posOf(x.Val)}
		if y, ok := f["paths"]; ok {
			from.Paths = p.globs(y.Key, y.Val, "artifacts.paths")
		}
		return nil, from
	}
	x, ok := f["paths"]
	if !ok {
		p.errorf(n, `add paths: ["dist/*"]`, "artifacts has no paths")
		return nil, nil
	}
	return p.globs(x.Key, x.Val, "artifacts.paths"), nil
}

// globs parses a non-empty list of relative path globs.
func (p *parser) globs(key, n *yaml.Node, what string) []string {
	if n.Kind == yaml.ScalarNode && !yamlpos.IsNull(n) {
		p.errorf(n, fmt.Sprintf("write %s: [%q]", key.Value, n.Value), "%s must be a list, not %s", what, yamlpos.KindName(n))
		return nil
	}
	if !p.isKind(n, yaml.SequenceNode, what, false) {
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(key, "add a path or remove the key", "%s is empty", what)
		return nil
	}
	var out []string
	for _, e := range n.Content {
		s, ok := p.str(e, what+" path")
		if !ok {
			continue
		}
		const rel = "paths are relative to the step's working directory"
		switch {
		case strings.TrimSpace(s) == "":
			p.errorf(e, "", "%s path is empty", what)
		case strings.HasPrefix(s, "/") || strings.HasPrefix(s, "\\") || driveRE.MatchString(s):
			p.errorf(e, rel, "%s path %q is absolute", what, s)
		case slices.Contains(strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == '\\' }), ".."):
			p.errorf(e, rel+" and stay inside it", "%s path %q has a '..' component", what, s)
		default:
			if _, err := path.Match(s, ""); err != nil {
				p.errorf(e, "use *, ?, ** and [...] as in shell globs", "%s path %q is not a valid glob", what, s)
				continue
			}
			out = append(out, s)
		}
	}
	return out
}

func (p *parser) approval(n *yaml.Node) *Approval {
	a := &Approval{}
	if yamlpos.IsNull(n) {
		return a
	}
	f := p.fields(n, "approval", approvalKeys)
	if f == nil {
		return a
	}
	if x, ok := f["approvers"]; ok && p.isKind(x.Val, yaml.SequenceNode, "approval.approvers", true) {
		seen := map[string]bool{}
		for _, e := range x.Val.Content {
			s, ok := p.str(e, "approver")
			switch {
			case !ok:
			case strings.TrimSpace(s) == "":
				p.errorf(e, "", "approver is empty")
			case len(s) > maxNameLen:
				p.errorf(e, "", "approver name is %d characters; the limit is %d", len(s), maxNameLen)
			case seen[s]:
				p.errorf(e, "", "duplicate approver %q", s)
			case badRoleApprover(s) != "":
				p.errorf(e, "", "%s", badRoleApprover(s))
			default:
				seen[s] = true
				a.Approvers = append(a.Approvers, s)
			}
		}
	}
	if x, ok := f["timeout"]; ok {
		a.Timeout = p.duration(x.Val, "approval.timeout")
	}
	if x, ok := f["prompt"]; ok {
		a.Prompt, _ = p.str(x.Val, "approval.prompt")
	}
	return a
}

func (p *parser) concurrency(n *yaml.Node) *Concurrency {
	f := p.fields(n, "concurrency", concurrencyKeys)
	if f == nil {
		return nil
	}
	c := &Concurrency{Limit: 1}
	if x, ok := f["group"]; ok {
		if s, ok := p.str(x.Val, "concurrency.group"); ok {
			switch {
			case strings.TrimSpace(s) == "":
				p.errorf(x.Val, "name the group, e.g. deploy-production", "concurrency.group is empty")
			case len(s) > maxNameLen:
				p.errorf(x.Val, "", "concurrency.group is %d characters; the limit is %d", len(s), maxNameLen)
			case strings.ContainsFunc(s, unicode.IsControl):
				p.errorf(x.Val, "", "concurrency.group contains control characters")
			default:
				c.Group = s
			}
		}
	} else {
		p.errorf(n, "add group: NAME, e.g. group: deploy-production", "concurrency has no group")
	}
	if x, ok := f["limit"]; ok {
		if v := p.count(x.Val, "concurrency.limit", 1, math.MaxInt32); v != nil {
			c.Limit = *v
		}
	}
	return c
}

func (p *parser) commands(key, n *yaml.Node) []string {
	if n.Kind == yaml.ScalarNode && !yamlpos.IsNull(n) {
		// A common slip: commands: make. Say how to write it.
		p.errorf(n, `write commands: ["..."] or use command: for one line`, "commands must be a list, not %s", yamlpos.KindName(n))
		return nil
	}
	if !p.isKind(n, yaml.SequenceNode, "commands", false) {
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(key, "add at least one command", "commands is empty")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for _, c := range n.Content {
		if c.Kind == yaml.MappingNode {
			p.errorf(c, `quote the command: "..." (it contains ": ")`, "command must be a string, not a mapping")
			continue
		}
		s, ok := p.str(c, "command")
		if !ok {
			continue
		}
		if strings.TrimSpace(s) == "" {
			p.errorf(c, "", "command is empty")
			continue
		}
		out = append(out, s)
	}
	return out
}

// str returns the text of a scalar. Numbers and booleans are taken as
// written; null and non-scalars are rejected.
func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	if n.Kind == yaml.AliasNode {
		p.isKind(n, yaml.ScalarNode, what, false)
		return "", false
	}
	if n.Kind != yaml.ScalarNode || yamlpos.IsNull(n) {
		p.errorf(n, "", "%s must be a string, not %s", what, yamlpos.KindName(n))
		return "", false
	}
	return n.Value, true
}

// stringMap reads a mapping of scalars; check validates each key and
// returns a problem description or "".
func (p *parser) stringMap(n *yaml.Node, what string, check func(string) (msg, hint string)) map[string]string {
	if !p.isKind(n, yaml.MappingNode, what, true) {
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name, ok := p.str(k, what+" key")
		if !ok {
			continue
		}
		if first, dup := seen[name]; dup {
			p.errorf(k, "", "duplicate key %q in %s (first at line %d)", name, what, first.Line)
			continue
		}
		seen[name] = k
		if msg, hint := check(name); msg != "" {
			p.errorf(k, hint, "%s", msg)
			continue
		}
		val, ok := p.str(v, fmt.Sprintf("%s value of %s", what, name))
		if !ok {
			continue
		}
		out[name] = val
	}
	return out
}

func (p *parser) env(n *yaml.Node, what string) map[string]string {
	return p.stringMap(n, what, func(k string) (string, string) {
		if !envNameRE.MatchString(k) {
			return fmt.Sprintf("invalid environment variable name %q", k),
				"use letters, digits and '_', not starting with a digit"
		}
		return "", ""
	})
}

func (p *parser) labels(n *yaml.Node, what string) map[string]string {
	return p.stringMap(n, what, func(k string) (string, string) {
		if strings.TrimSpace(k) == "" {
			return "agent label name is empty", ""
		}
		return "", ""
	})
}

func (p *parser) duration(n *yaml.Node, what string) time.Duration {
	s, ok := p.str(n, what)
	if !ok {
		return 0
	}
	const hint = "use a Go duration such as 90s, 10m or 1h30m"
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		p.errorf(n, hint, "%s: invalid duration %q", what, s)
		return 0
	case d <= 0:
		h := "leave it out to use the cluster default"
		if what == "approval.timeout" {
			h = "leave it out to wait the default of 7 days"
		}
		p.errorf(n, h, "%s must be positive, not %q", what, s)
		return 0
	case d < time.Millisecond:
		p.errorf(n, hint, "%s %q is shorter than a millisecond", what, s)
		return 0
	}
	return d
}

// retention parses a positive retention: a Go duration or whole days
// ("7d").
func (p *parser) retention(n *yaml.Node, what string) time.Duration {
	s, ok := p.str(n, what)
	if !ok {
		return 0
	}
	const hint = "use days such as 7d or a Go duration such as 36h"
	d, err := ParseRetention(s)
	switch {
	case err != nil:
		p.errorf(n, hint, "%s: %v", what, err)
		return 0
	case d <= 0:
		p.errorf(n, "leave it out to use the cluster default (--artifact-retention)", "%s must be positive, not %q", what, s)
		return 0
	case d < time.Millisecond:
		p.errorf(n, hint, "%s %q is shorter than a millisecond", what, s)
		return 0
	}
	return d
}

func (p *parser) retry(n *yaml.Node, what string) Retry {
	var r Retry
	f := p.fields(n, what, retryKeys)
	if f == nil {
		return r
	}
	if x, ok := f["on_agent_lost"]; ok {
		r.OnAgentLost = p.count(x.Val, what+".on_agent_lost", 0, MaxRetries)
	}
	if x, ok := f["on_failure"]; ok {
		r.OnFailure = p.count(x.Val, what+".on_failure", 0, MaxRetries)
	}
	return r
}

// count reads an integer in [lo, hi].
func (p *parser) count(n *yaml.Node, what string, lo, hi int64) *int32 {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		if n.Kind == yaml.AliasNode {
			p.isKind(n, yaml.ScalarNode, what, false)
			return nil
		}
		p.errorf(n, "", "%s must be an integer, not %s", what, yamlpos.KindName(n))
		return nil
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		p.errorf(n, "write a plain decimal number", "%s: invalid integer %q", what, n.Value)
		return nil
	case v < lo && lo == 0:
		p.errorf(n, "use 0 for no retries", "%s must not be negative, got %s", what, n.Value)
		return nil
	case v < lo:
		p.errorf(n, "", "%s must be at least %d, got %s", what, lo, n.Value)
		return nil
	case err != nil || v > hi:
		p.errorf(n, "", "%s is %s; the limit is %d", what, n.Value, hi)
		return nil
	}
	c := int32(v)
	return &c
}

// badRoleApprover explains what is wrong with an approvers entry
// "role:NAME" whose NAME is not a human role; "" when s is fine.
func badRoleApprover(s string) string {
	name, ok := strings.CutPrefix(s, role.ApproverPrefix)
	if !ok {
		return ""
	}
	r, err := role.Parse(name)
	if err != nil || !r.Human() {
		return fmt.Sprintf("approver %q: role must be viewer, developer, approver, operator or admin", s)
	}
	return ""
}

// secretNameRE is what a secret name must look like: an environment
// variable name.
var secretNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// maxSecretsPerStep bounds the secrets: list of one step.
const maxSecretsPerStep = 64

// secretNames parses a step's secrets: list of secret names, each becoming
// an environment variable of the job (so it may not also be in env).
func (p *parser) secretNames(key, n *yaml.Node, env map[string]string) []string {
	if n.Kind == yaml.ScalarNode && !yamlpos.IsNull(n) {
		p.errorf(n, fmt.Sprintf("write secrets: [%s]", n.Value), "secrets must be a list of secret names, not %s", yamlpos.KindName(n))
		return nil
	}
	if !p.isKind(n, yaml.SequenceNode, "secrets", false) {
		return nil
	}
	if len(n.Content) > maxSecretsPerStep {
		p.errorf(key, "", "secrets lists %d names; the limit is %d", len(n.Content), maxSecretsPerStep)
		return nil
	}
	var out []string
	for _, e := range n.Content {
		s, ok := p.str(e, "secret name")
		switch {
		case !ok:
		case len(s) > 128 || !secretNameRE.MatchString(s):
			p.errorf(e, "secret names are environment variable names: letters, digits and _, not starting with a digit", "secret name %q is invalid", s)
		case slices.Contains(out, s):
			p.errorf(e, "", "secret %q is listed twice", s)
		default:
			if _, clash := env[s]; clash {
				p.errorf(e, "remove it from env: the secret sets the variable", "%s is both in env and in secrets", s)
				continue
			}
			out = append(out, s)
		}
	}
	return out
}
