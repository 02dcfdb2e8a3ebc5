package pipeline

import "testing"

// Each step carries its stage's name (the dashboard's column titles); the
// steps shorthand has one unnamed stage.
func TestStepsCarryTheirStageName(t *testing.T) {
	p, err := Parse("x.yaml", []byte("stages:\n  - name: build\n    steps: [{key: a, command: x}]\n  - steps: [{key: b, command: y}]\n  - name: ship\n    steps: [{key: c, command: z}, {key: d, command: w}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	specs, err := p.Resolve(goldenContext)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range specs {
		got[s.GetKey()] = s.GetStageName()
	}
	if got["a"] != "build" || got["b"] != "" || got["c"] != "ship" || got["d"] != "ship" {
		t.Fatalf("stage names %v", got)
	}
	p, err = Parse("y.yaml", []byte("steps:\n  - {key: a, command: x}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if specs, err = p.Resolve(goldenContext); err != nil || specs[0].GetStageName() != "" {
		t.Fatalf("shorthand: %v %v", specs, err)
	}
}
