package pipeline

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func mustParse(t *testing.T, src string) *Pipeline {
	t.Helper()
	p, err := Parse("x.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return p
}

func byKey(specs []*kilnv1.StepSpec) map[string]*kilnv1.StepSpec {
	m := map[string]*kilnv1.StepSpec{}
	for _, s := range specs {
		m[s.Key] = s
	}
	return m
}

func keys(specs []*kilnv1.StepSpec) []string {
	var out []string
	for _, s := range specs {
		out = append(out, s.Key)
	}
	return out
}

func TestMatrixExpansion(t *testing.T) {
	p := mustParse(t, `
steps:
  - key: test
    matrix: {os: [linux], go: ["1.22", "1.23"]}
    env: {A: b}
    command: go test
  - key: after
    needs: [test]
    command: x
`)
	specs, err := p.Resolve(Context{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keys(specs), []string{"test-1.22-linux", "test-1.23-linux", "after"}; !slices.Equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	s := specs[0]
	if !maps.Equal(s.Matrix, map[string]string{"go": "1.22", "os": "linux"}) ||
		!maps.Equal(s.Env, map[string]string{"A": "b", "GO": "1.22", "OS": "linux"}) {
		t.Errorf("spec = %v", s)
	}
	if got := specs[2].Needs; !slices.Equal(got, []string{"test-1.22-linux", "test-1.23-linux"}) {
		t.Errorf("needs = %v", got)
	}
	if p.NumSteps() != 3 {
		t.Errorf("NumSteps = %d, want 3", p.NumSteps())
	}
	for in, want := range map[string]string{"Mac OS": "mac_os", "1.22": "1.22", "a/b": "a_b", "É": "_", "x-Y_z.1": "x-y_z.1"} {
		if got := sanitizeMatrixValue(in); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
	if got := matrixEnvName("target-os"); got != "TARGET_OS" {
		t.Errorf("env name = %q", got)
	}
}

func TestNeedsResolution(t *testing.T) {
	p := mustParse(t, `
stages:
  - steps:
      - {key: a, command: x}
      - {key: b, command: x}
  - steps:
      - {key: c, command: x}
      - {key: d, command: x, needs: []}
      - {key: e, command: x, needs: [g, a, a]}
  - steps:
      - {key: f, command: x}
      - {key: g, command: x, needs: [b]}
`)
	got := map[string][]string{}
	for _, s := range p.Steps() {
		got[s.Key] = s.Needs
	}
	want := map[string][]string{"a": nil, "b": nil, "c": {"a", "b"}, "d": nil, "e": {"a", "g"}, "f": {"c", "d", "e"}, "g": {"b"}}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s needs %v, want %v", k, got[k], w)
		}
	}
}

func TestNeedsErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"cycle", "steps:\n  - {key: a, command: x, needs: [b]}\n  - {key: b, command: x, needs: [a]}\n",
			`x.yaml:2:34: needs cycle: a -> b -> a (hint: remove one of these needs, or move a step to an earlier stage)`},
		{"implicit", "stages:\n  - steps: [{key: a, command: x, needs: [b]}]\n  - steps: [{key: b, command: x}]\n",
			`x.yaml:2:42: needs cycle: a -> b -> a (hint: remove one of these needs, or move a step to an earlier stage)`},
		{"self", "steps:\n  - {key: a, command: x, needs: [a]}\n",
			`x.yaml:2:34: step "a" needs itself (hint: remove it)`},
		{"unknown", "steps:\n  - {key: build, command: x}\n  - {key: a, command: x, needs: [biuld]}\n",
			`x.yaml:3:34: step "a" needs unknown step "biuld" (hint: did you mean "build"?)`},
		{"matrix cycle", "steps:\n  - {key: a, command: x, matrix: {v: [1, 2]}, needs: [b]}\n  - {key: b, command: x, needs: [a-2]}\n",
			`x.yaml:3:34: needs cycle: b -> a-2 -> b (hint: remove one of these needs, or move a step to an earlier stage)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tt.src))
			if err == nil || err.Error() != tt.want {
				t.Errorf("got  %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestNeedsLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("stages:\n  - steps:\n")
	for i := range MaxNeeds + 1 {
		fmt.Fprintf(&b, "      - {key: s%d, command: x}\n", i)
	}
	b.WriteString("  - steps:\n      - key: implicit\n        command: x\n      - key: explicit\n        command: x\n        needs:\n")
	for i := range MaxNeeds + 1 {
		fmt.Fprintf(&b, "          - s%d\n", i)
	}
	_, err := Parse("x.yaml", []byte(b.String()))
	want := fmt.Sprintf("x.yaml:%d:9: step \"explicit\" needs 101 steps; the limit is 100 (hint: depend on a stage instead, or split the step)", MaxNeeds+9)
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestMaxStepsAfterExpansion(t *testing.T) {
	var b strings.Builder
	b.WriteString("steps:\n")
	for i := range 8 {
		fmt.Fprintf(&b, "  - {key: s%d, command: x, matrix: {a: [1, 2, 3, 4, 5, 6, 7, 8], b: [1, 2, 3, 4, 5, 6, 7, 8]}}\n", i)
	}
	_, err := Parse("x.yaml", []byte(b.String()))
	want := "x.yaml:9:27: too many steps after matrix expansion: a pipeline has at most 500 (hint: use fewer matrix values or fewer steps)"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestResolveConditions(t *testing.T) {
	p := mustParse(t, `
env: {TARGET: staging, KEEP: yes}
steps:
  - {key: main, command: x, if: branch == "main"}
  - {key: prod, command: x, if: env.TARGET == "prod"}
  - {key: keep, command: x, if: env.KEEP == "yes"}
  - {key: always, command: x}
`)
	specs, err := p.Resolve(Context{Branch: "dev", Event: "push", Env: map[string]string{"TARGET": "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	m := byKey(specs)
	if got := m["main"].SkipReason; got != `if: branch == "main" was false` {
		t.Errorf("main: %q", got)
	}
	if m["prod"].SkipReason != "" || m["keep"].SkipReason != "" || m["always"].SkipReason != "" {
		t.Errorf("ctx env must win over the pipeline env: %v", specs)
	}
	if m := byKey(p.Steps()); m["prod"].SkipReason == "" || m["main"].SkipReason == "" {
		t.Errorf("Steps(): %v", m)
	}
	if p.Env["TARGET"] != "staging" {
		t.Error("Resolve changed the pipeline's env")
	}
}

func TestApprovalAndConcurrency(t *testing.T) {
	p := mustParse(t, `
concurrency: {group: prod}
steps:
  - key: gate
    name: Ship?
    needs: []
    if: branch == "main"
    approval: {approvers: [alice], timeout: 72h, prompt: "Go?"}
  - key: gate2
    approval: {}
`)
	if p.Concurrency == nil || *p.Concurrency != (Concurrency{Group: "prod", Limit: 1}) {
		t.Errorf("concurrency = %+v", p.Concurrency)
	}
	specs, err := p.Resolve(Context{Branch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	a := specs[0].Approval
	if a == nil || !slices.Equal(a.Approvers, []string{"alice"}) || a.TimeoutMs != 72*3600*1000 || a.Prompt != "Go?" ||
		len(specs[0].Commands) != 0 || specs[0].Name != "Ship?" || specs[0].SkipReason != "" || specs[0].Retry == nil {
		t.Errorf("gate = %v", specs[0])
	}
	if a := specs[1].Approval; a == nil || a.TimeoutMs != DefaultApprovalTimeout.Milliseconds() || a.Approvers != nil {
		t.Errorf("gate2 = %v", specs[1])
	}
	p2 := mustParse(t, "concurrency: {group: g, limit: 3}\nsteps: [{key: a, command: x}]\n")
	if p2.Concurrency.Limit != 3 {
		t.Errorf("limit = %d", p2.Concurrency.Limit)
	}
}

// A pipeline built by hand is checked by Resolve; Steps still returns what
// it can.
func TestResolveHandBuilt(t *testing.T) {
	p := &Pipeline{Stages: []*Stage{{Steps: []*Step{
		{Key: "a", Commands: []string{"x"}, Needs: []string{"b"}, Line: 3, Column: 5},
		{Key: "b", Commands: []string{"x"}, If: "branch ==", Needs: []string{"a"}},
		{Key: "c", Commands: []string{"x"}, Needs: []string{"zzz"}},
		nil,
	}}, nil}}
	_, err := p.Resolve(Context{})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`needs cycle: a -> b -> a`, `step "b": invalid if expression`, `needs unknown step "zzz"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if got := len(p.Steps()); got != 3 {
		t.Errorf("Steps() = %d steps", got)
	}
}
