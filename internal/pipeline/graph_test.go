package pipeline

import (
	"fmt"
	"slices"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestStageEdges(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stages []int32
		want   [][]int
	}{
		{"empty", nil, [][]int{}},
		{"one stage", []int32{0, 0, 0}, [][]int{nil, nil, nil}},
		{"two stages", []int32{0, 0, 1, 1}, [][]int{nil, nil, {0, 1}, {0, 1}}},
		{"three stages", []int32{0, 1, 1, 2}, [][]int{nil, {0}, {0}, {1, 2}}},
		{"gap: stage 2 waits for stage 0", []int32{0, 0, 2}, [][]int{nil, nil, {0, 1}}},
		{"first stage not 0", []int32{3, 5, 5}, [][]int{nil, {0}, {0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			specs := make([]*kilnv1.StepSpec, len(tc.stages))
			for i, s := range tc.stages {
				specs[i] = &kilnv1.StepSpec{Key: fmt.Sprint("s", i), Stage: s}
			}
			got := StageEdges(specs)
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("StageEdges(%v) = %v, want %v", tc.stages, got, tc.want)
			}
		})
	}
}

func TestCycles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edges [][]int
		want  [][]int
	}{
		{"empty", nil, nil},
		{"chain", [][]int{nil, {0}, {1}}, nil},
		{"diamond", [][]int{nil, {0}, {0}, {1, 2}}, nil},
		{"self", [][]int{{0}}, [][]int{{0}}},
		{"two", [][]int{{1}, {0}}, [][]int{{0, 1}}},
		{"three", [][]int{{2}, {0}, {1}}, [][]int{{0, 2, 1}}},
		{"behind a root", [][]int{{1}, {2}, {1}}, [][]int{{1, 2}}},
		{"one per back edge", [][]int{{1, 2}, {0}, {0}}, [][]int{{0, 1}, {0, 2}}},
		{"disjoint", [][]int{{1}, {0}, {3}, {2}}, [][]int{{0, 1}, {2, 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got [][]int
			for c := range Cycles(tc.edges) {
				got = append(got, c)
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("Cycles(%v) = %v, want %v", tc.edges, got, tc.want)
			}
		})
	}
}

func TestCyclesStopsEarly(t *testing.T) {
	n := 0
	for range Cycles([][]int{{1}, {0}, {3}, {2}}) {
		n++
		break
	}
	if n != 1 {
		t.Fatalf("%d cycles after break, want 1", n)
	}
}

// A step after a stage with no steps waits for the last stage before it
// that has steps (pipeline.StageEdges); it used to become a root here
// while coordinator/state gave it those needs.
func TestStageGap(t *testing.T) {
	p := &Pipeline{Stages: []*Stage{
		{Steps: []*Step{{Key: "a", Commands: []string{"x"}}, {Key: "b", Commands: []string{"x"}}}},
		{},
		{Steps: []*Step{{Key: "c", Commands: []string{"x"}}}},
	}}
	specs, err := p.Resolve(Context{Event: "manual"})
	if err != nil {
		t.Fatal(err)
	}
	if c := specs[2]; c.Key != "c" || c.Stage != 2 || !slices.Equal(c.Needs, []string{"a", "b"}) {
		t.Fatalf("c: stage %d needs %v, want stage 2 needs [a b]", c.Stage, c.Needs)
	}
}
