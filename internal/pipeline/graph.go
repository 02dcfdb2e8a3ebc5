package pipeline

import (
	"iter"
	"slices"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// The needs graph of a build: nodes are steps (indices into a spec list),
// edges[i] lists the steps step i needs. Resolve uses these helpers on the
// steps of a file; coordinator/state uses them on the steps of a submitted
// build, so both agree on the stage model and on what a cycle is.

// StageEdges returns the needs the stage model gives each of specs, as
// indices into specs: every step of the nearest earlier stage that has
// steps. specs must be in stage order (Stage nondecreasing). The steps of
// the first stage get none. A stage number without steps is passed over:
// stages run in order, so a step after the gap still waits for the last
// stage before it that has steps.
//
// This is the one stage-to-needs rule. Resolve applies it to the steps that
// write no needs; coordinator/state applies it to builds whose client sent
// no needs at all (clients older than needs).
func StageEdges(specs []*kilnv1.StepSpec) [][]int {
	out := make([][]int, len(specs))
	var prev, cur []int
	for i, sp := range specs {
		if i > 0 && sp.GetStage() != specs[i-1].GetStage() {
			prev, cur = cur, nil
		}
		out[i] = slices.Clone(prev)
		cur = append(cur, i)
	}
	return out
}

// Cycles yields the cycles of the graph in which edges[u] lists the nodes u
// needs (indices into edges). A depth-first search from node 0, 1, ...,
// following each node's edges in order, yields one cycle per back edge it
// meets: the nodes v, ..., u where each needs the next and u needs v. Every
// graph with a cycle yields at least one. Each yielded slice is new; the
// caller may keep it, and may stop the search by breaking out of the loop.
func Cycles(edges [][]int) iter.Seq[[]int] {
	return func(yield func([]int) bool) {
		const (
			white = iota // not visited
			grey         // on the current path
			black        // done
		)
		color := make([]int8, len(edges))
		var stack []int
		var visit func(u int) bool
		visit = func(u int) bool {
			color[u] = grey
			stack = append(stack, u)
			for _, v := range edges[u] {
				switch color[v] {
				case white:
					if !visit(v) {
						return false
					}
				case grey:
					if !yield(slices.Clone(stack[slices.Index(stack, v):])) {
						return false
					}
				}
			}
			stack = stack[:len(stack)-1]
			color[u] = black
			return true
		}
		for u := range edges {
			if color[u] == white && !visit(u) {
				return
			}
		}
	}
}
