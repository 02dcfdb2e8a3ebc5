package pipeline

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/kiln-ci/kiln/internal/yamlpos"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

// pos is a position in the file; zero when unknown.
type pos struct{ line, col int }

func posOf(n *yaml.Node) pos {
	if n == nil {
		return pos{}
	}
	return pos{n.Line, n.Column}
}

// at returns p, or the step's own position when p is unknown (a step built
// by hand rather than by Parse).
func (st *Step) at(p pos) pos {
	if p.line == 0 {
		return pos{st.Line, st.Column}
	}
	return p
}

// combinations returns the number of steps st's matrix expands into (1
// without a matrix); it saturates above MaxMatrixCombinations.
func combinations(m map[string][]string) int {
	n := 1
	for _, vals := range m {
		n *= len(vals)
		if n > MaxMatrixCombinations {
			return MaxMatrixCombinations + 1
		}
	}
	return n
}

// expansion is one step of an expanded matrix.
type expansion struct {
	key    string
	values []string          // in sorted axis order, as written
	matrix map[string]string // axis -> value as written
	env    map[string]string // AXIS -> value as written
}

// sanitizeMatrixValue makes a matrix value usable in a step key: lower-case,
// every character outside [a-z0-9_.-] replaced by '_'.
func sanitizeMatrixValue(v string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(v) {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r == '_' || r == '.' || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// matrixEnvName is the environment variable of a matrix axis: upper-cased,
// every character outside [A-Z0-9_] replaced by '_'.
func matrixEnvName(axis string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(axis) {
		if ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// expandMatrix returns the steps of st's matrix: one per combination of
// values, axes in sorted order, the last axis varying fastest, values in
// written order. The key of each is the step's key and the sanitized values
// joined by '-'. Without a matrix it returns the step itself.
func expandMatrix(st *Step) []expansion {
	if len(st.Matrix) == 0 {
		return []expansion{{key: st.Key}}
	}
	axes := slices.Sorted(maps.Keys(st.Matrix))
	if combinations(st.Matrix) > MaxMatrixCombinations {
		return nil
	}
	out := []expansion{{key: st.Key}}
	for _, axis := range axes {
		var next []expansion
		for _, e := range out {
			for _, v := range st.Matrix[axis] {
				next = append(next, expansion{
					key:    e.key + "-" + sanitizeMatrixValue(v),
					values: append(slices.Clip(e.values), v),
				})
			}
		}
		out = next
	}
	for i := range out {
		e := &out[i]
		e.matrix = make(map[string]string, len(axes))
		e.env = make(map[string]string, len(axes))
		for j, axis := range axes {
			e.matrix[axis] = e.values[j]
			e.env[matrixEnvName(axis)] = e.values[j]
		}
	}
	return out
}

// planned is the pipeline after matrix expansion and needs resolution.
type planned struct {
	specs []*kilnv1.StepSpec
	from  []*Step // the written step of each spec
	errs  []*Error
}

// plan expands matrices, applies defaults and resolves needs, checking
// duplicate keys after expansion, unknown needs, self-needs, MaxNeeds,
// MaxSteps after expansion and cycles. if: conditions are left to resolve.
func (p *Pipeline) plan() *planned {
	pl := &planned{}
	errAt := func(at pos, hint, format string, args ...any) {
		pl.errs = append(pl.errs, &Error{File: p.file, Line: at.line, Column: at.col,
			Msg: fmt.Sprintf(format, args...), Hint: hint})
	}

	// Written keys first: a needs entry naming a matrix step means all of
	// its expansions.
	type written struct {
		st    *Step
		stage int
		idx   []int // final indices
	}
	byKey := map[string]*written{}
	var order []*written
	for si, stage := range p.Stages {
		if stage == nil {
			continue
		}
		for _, st := range stage.Steps {
			if st == nil || st.Key == "" {
				continue
			}
			if _, dup := byKey[st.Key]; dup {
				if p.parsed {
					continue // Parse reported it at the key
				}
				errAt(st.at(pos{}), "step keys must be unique in the file", "duplicate step key %q", st.Key)
				continue
			}
			w := &written{st: st, stage: si}
			byKey[st.Key] = w
			order = append(order, w)
		}
	}

	// Expand and apply defaults.
	finalKey := map[string]int{} // final key -> index
	tooMany := false
	for _, w := range order {
		st := w.st
		exps := expandMatrix(st)
		if exps == nil {
			errAt(st.at(st.matrixPos), "", "step %q: matrix has more than %d combinations", st.Key, MaxMatrixCombinations)
			continue
		}
		for _, e := range exps {
			if len(st.Matrix) > 0 {
				if len(e.key) > maxKeyLen {
					errAt(st.at(st.matrixPos), "use shorter matrix values or a shorter step key",
						"step key %q from the matrix is %d characters; the limit is %d", e.key, len(e.key), maxKeyLen)
					continue
				}
				if other, clash := byKey[e.key]; clash {
					errAt(st.at(st.matrixPos), "rename one of the steps or change the matrix values",
						"step key %q from the matrix of step %q is also the key of the step at line %d", e.key, st.Key, other.st.Line)
					continue
				}
			}
			if first, dup := finalKey[e.key]; dup {
				errAt(st.at(st.matrixPos), "matrix values must stay distinct once lower-cased and sanitized to [a-z0-9_.-]",
					"duplicate step key %q after matrix expansion (first from step %q)", e.key, pl.from[first].Key)
				continue
			}
			if len(pl.specs) == MaxSteps && !tooMany {
				tooMany = true
				errAt(st.at(st.matrixPos), "use fewer matrix values or fewer steps",
					"too many steps after matrix expansion: a pipeline has at most %d", MaxSteps)
			}
			i := len(pl.specs)
			finalKey[e.key] = i
			w.idx = append(w.idx, i)
			pl.specs = append(pl.specs, p.spec(st, w.stage, e))
			pl.from = append(pl.from, st)
		}
	}
	if tooMany {
		// The graph of an oversized pipeline is not worth checking.
		return pl
	}

	// Needs: a step that writes none gets the stage model's.
	stageModel := StageEdges(pl.specs)
	edges := make([][]int, len(pl.specs))
	explicit := make([]map[int]pos, len(pl.specs)) // edge -> needs entry
	var names []string
	for _, w := range order {
		st := w.st
		if st.Needs == nil {
			for _, i := range w.idx {
				edges[i] = stageModel[i]
			}
			continue
		}
		var targets []int
		entryOf := map[int]pos{}
		for k, name := range st.Needs {
			at := pos{}
			if k < len(st.needsPos) {
				at = st.needsPos[k]
			}
			at = st.at(at)
			var idx []int
			if tw, ok := byKey[name]; ok {
				idx = tw.idx
				if tw == w {
					errAt(at, "remove it", "step %q needs itself", st.Key)
					continue
				}
			} else if i, ok := finalKey[name]; ok {
				idx = []int{i}
				if pl.from[i] == st {
					errAt(at, "a matrix expansion cannot need an expansion of the same step", "step %q needs its own matrix expansion %q", st.Key, name)
					continue
				}
			} else {
				if names == nil {
					names = slices.Sorted(maps.Keys(byKey))
					// Sorted too, so equally close suggestions are stable.
					for _, k := range slices.Sorted(maps.Keys(finalKey)) {
						if _, ok := byKey[k]; !ok {
							names = append(names, k)
						}
					}
				}
				hint := "needs lists step keys of this pipeline"
				// Only the first maxErrors are shown; spare the search after.
				if len(pl.errs) < maxErrors {
					if c := yamlpos.Closest(name, names, nil); c != "" {
						hint = fmt.Sprintf("did you mean %q?", c)
					}
				}
				errAt(at, hint, "step %q needs unknown step %q", st.Key, name)
				continue
			}
			for _, i := range idx {
				if _, seen := entryOf[i]; !seen {
					entryOf[i] = at
					targets = append(targets, i)
				}
			}
		}
		if len(targets) > MaxNeeds {
			errAt(st.at(st.needsKey), "depend on a stage instead, or split the step",
				"step %q needs %d steps; the limit is %d", st.Key, len(targets), MaxNeeds)
		}
		for _, i := range w.idx {
			edges[i] = slices.Clone(targets)
			explicit[i] = entryOf
		}
	}
	for i, spec := range pl.specs {
		keys := make([]string, 0, len(edges[i]))
		for _, j := range edges[i] {
			keys = append(keys, pl.specs[j].Key)
		}
		slices.Sort(keys)
		spec.Needs = slices.Compact(keys)
	}

	// artifacts.from must name steps this one needs: artifacts only exist
	// once the producer ended, which only needs guarantees.
	for i, spec := range pl.specs {
		st := pl.from[i]
		if st.ArtifactsFrom == nil {
			continue
		}
		af := st.ArtifactsFrom
		var idx []int
		if tw, ok := byKey[af.Step]; ok {
			idx = tw.idx
		} else if j, ok := finalKey[af.Step]; ok {
			idx = []int{j}
		} else {
			errAt(st.at(af.at), "artifacts.from names a step key of this pipeline", "step %q takes artifacts from unknown step %q", st.Key, af.Step)
			continue
		}
		for _, j := range idx {
			key := pl.specs[j].Key
			if _, ok := slices.BinarySearch(spec.Needs, key); !ok {
				errAt(st.at(af.at), fmt.Sprintf("add %q to the step's needs", af.Step),
					"step %q takes artifacts from %q, which it does not need", spec.Key, key)
				continue
			}
			spec.ArtifactsFrom = append(spec.ArtifactsFrom, &kilnv1.ArtifactSource{Step: key, Paths: slices.Clone(af.Paths)})
		}
	}

	// Cycles: each is reported at a needs entry on it (implicit edges only
	// go back to an earlier stage, so every cycle has one).
	reported := map[pos]bool{}
	for cycle := range Cycles(edges) { // v ... u, then back to v
		// Start the path at the first step whose needs entry closes the
		// cycle.
		at, rot := pos{}, 0
		for k, x := range cycle {
			y := cycle[(k+1)%len(cycle)]
			if e, ok := explicit[x][y]; ok {
				at, rot = e, k
				break
			}
		}
		if at.line == 0 {
			st := pl.from[cycle[len(cycle)-1]]
			at = st.at(st.needsKey)
		}
		if reported[at] {
			continue
		}
		reported[at] = true
		path := make([]string, 0, len(cycle)+1)
		for k := range cycle {
			path = append(path, pl.specs[cycle[(rot+k)%len(cycle)]].Key)
		}
		path = append(path, path[0])
		errAt(at, "remove one of these needs, or move a step to an earlier stage",
			"needs cycle: %s", strings.Join(path, " -> "))
	}
	return pl
}

// stageName is the name of the stage at index i, "" when it has none.
func (p *Pipeline) stageName(i int) string {
	if i < 0 || i >= len(p.Stages) {
		return ""
	}
	return p.Stages[i].Name
}

// spec builds the StepSpec of one expansion of st, defaults applied.
func (p *Pipeline) spec(st *Step, stage int, e expansion) *kilnv1.StepSpec {
	spec := &kilnv1.StepSpec{
		Key:          e.key,
		Name:         st.Name,
		Stage:        int32(stage),
		StageName:    p.stageName(stage),
		AllowFailure: st.AllowFailure,
		Production:   st.Production,
		Artifacts:    slices.Clone(st.Artifacts),
		Junit:        slices.Clone(st.JUnit),
		Secrets:      slices.Clone(st.Secrets),
	}
	switch {
	case spec.Name == "":
		spec.Name = e.key
	case len(e.values) > 0:
		spec.Name = fmt.Sprintf("%s (%s)", st.Name, strings.Join(e.values, ", "))
	}
	if st.Approval != nil {
		timeout := st.Approval.Timeout
		if timeout == 0 {
			timeout = DefaultApprovalTimeout
		}
		spec.Approval = &kilnv1.ApprovalSpec{
			Approvers: slices.Clone(st.Approval.Approvers),
			TimeoutMs: timeout.Milliseconds(),
			Prompt:    st.Approval.Prompt,
		}
		spec.Retry = &kilnv1.RetryPolicy{}
		return spec
	}
	if st.Deploy != nil {
		spec.Deploy = deploySpec(st.Deploy)
		// Each host action is its own job: no retry of the step itself.
		spec.Retry = &kilnv1.RetryPolicy{}
		if len(st.Env) > 0 {
			spec.Env = maps.Clone(st.Env)
		}
		timeout := st.Timeout
		if timeout == 0 {
			timeout = p.Timeout
		}
		spec.TimeoutMs = timeout.Milliseconds()
		return spec
	}
	spec.Commands = slices.Clone(st.Commands)
	spec.Buildspec = st.Buildspec
	if len(p.Agents) > 0 || len(st.Agents) > 0 {
		spec.Agents = make(map[string]string, len(p.Agents)+len(st.Agents))
		maps.Copy(spec.Agents, p.Agents)
		maps.Copy(spec.Agents, st.Agents)
	}
	if st.Runtime != nil {
		spec.Runtime = proto.Clone(st.Runtime).(*kilnv1.StepRuntime)
		ImplyLabels([]*kilnv1.StepSpec{spec})
	}
	if len(st.Env) > 0 || len(e.env) > 0 {
		spec.Env = make(map[string]string, len(st.Env)+len(e.env))
		maps.Copy(spec.Env, st.Env)
		maps.Copy(spec.Env, e.env)
	}
	if len(e.matrix) > 0 {
		spec.Matrix = e.matrix
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
	return spec
}
