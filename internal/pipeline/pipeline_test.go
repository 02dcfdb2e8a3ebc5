package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"google.golang.org/protobuf/encoding/protojson"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

var update = flag.Bool("update", false, "rewrite the expected outputs under testdata/")

// goldenContext is the submit context of the valid golden files.
var goldenContext = Context{Branch: "main", Event: "push", Env: map[string]string{"DEPLOY": "yes"}}

// render prints a parsed pipeline deterministically for golden files: the
// steps are those of Resolve(goldenContext).
func render(t *testing.T, p *Pipeline) []byte {
	t.Helper()
	type step struct {
		Key, Name    string
		Commands     []string
		Agents, Env  map[string]string
		TimeoutMs    int64
		OnAgentLost  int32
		OnFailure    int32
		Stage        int32
		Needs        []string          `json:",omitempty"`
		AllowFailure bool              `json:",omitempty"`
		SkipReason   string            `json:",omitempty"`
		Matrix       map[string]string `json:",omitempty"`
		Artifacts    []string          `json:",omitempty"`
		Junit        []string          `json:",omitempty"`
		Approval     *struct {
			Approvers []string
			TimeoutMs int64
			Prompt    string
		} `json:",omitempty"`
		Deploy    *kilnv1.DeploySpec `json:",omitempty"`
		Runtime   json.RawMessage    `json:",omitempty"`
		Buildspec string             `json:",omitempty"`
	}
	out := struct {
		Name        string
		Env         map[string]string
		Concurrency *Concurrency `json:",omitempty"`
		Stages      []string
		Steps       []step
	}{Name: p.Name, Env: p.Env, Concurrency: p.Concurrency}
	for _, s := range p.Stages {
		out.Stages = append(out.Stages, s.Name)
	}
	specs, err := p.Resolve(goldenContext)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	for _, s := range specs {
		x := step{Key: s.Key, Name: s.Name, Commands: s.Commands, Agents: s.Agents, Env: s.Env,
			TimeoutMs: s.TimeoutMs, OnAgentLost: s.Retry.GetOnAgentLost(), OnFailure: s.Retry.GetOnFailure(),
			Stage: s.Stage, Needs: s.Needs, AllowFailure: s.AllowFailure, SkipReason: s.SkipReason,
			Matrix: s.Matrix, Artifacts: s.Artifacts, Junit: s.Junit, Buildspec: s.Buildspec}
		x.Deploy = s.GetDeploy()
		if a := s.Approval; a != nil {
			x.Approval = &struct {
				Approvers []string
				TimeoutMs int64
				Prompt    string
			}{a.Approvers, a.TimeoutMs, a.Prompt}
		}
		if s.Runtime != nil {
			b, err := protojson.Marshal(s.Runtime)
			if err != nil {
				t.Fatal(err)
			}
			// protojson's spacing is deliberately unstable; normalise it.
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			x.Runtime, _ = json.Marshal(v)
		}
		out.Steps = append(out.Steps, x)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s mismatch\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestParseValid(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no test files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Parse(filepath.Base(f), data)
			if err != nil {
				t.Fatalf("unexpected error:\n%v", err)
			}
			golden(t, strings.TrimSuffix(f, ".yaml")+".golden", render(t, p))
		})
	}
}

func TestParseInvalid(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	if len(files) == 0 {
		t.Fatal("no test files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Parse(filepath.Base(f), data)
			if err == nil {
				t.Fatalf("no error; parsed %+v", p)
			}
			if p != nil {
				t.Errorf("pipeline returned with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) || len(errs.List) == 0 {
				t.Fatalf("error is %T, want a non-empty *Errors", err)
			}
			golden(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(err.Error()+"\n"))
		})
	}
}

func TestDefaults(t *testing.T) {
	p, err := Parse("x.yaml", []byte("retry: {on_failure: 2}\nsteps:\n  - {key: a, command: x}\n  - {key: b, command: y, retry: {on_agent_lost: 0}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	steps := p.Steps()
	if got := steps[0].Retry; got.OnAgentLost != 1 || got.OnFailure != 2 {
		t.Errorf("step a retry = %v, want on_agent_lost 1 on_failure 2", got)
	}
	if got := steps[1].Retry; got.OnAgentLost != 0 || got.OnFailure != 2 {
		t.Errorf("step b retry = %v, want on_agent_lost 0 on_failure 2", got)
	}
	if steps[0].Name != "a" || steps[0].TimeoutMs != 0 || steps[0].Agents != nil {
		t.Errorf("step a = %v", steps[0])
	}
	p2, err := Parse("x.yaml", []byte("retry: {on_agent_lost: 4}\nsteps: [{key: a, command: x}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p2.Steps()[0].Retry.OnAgentLost; got != 4 {
		t.Errorf("pipeline default on_agent_lost ignored: got %d", got)
	}
}

func TestLimits(t *testing.T) {
	t.Run("size", func(t *testing.T) {
		data := append([]byte("steps: [{key: a, command: x}]\n#"), bytes.Repeat([]byte("x"), MaxFileSize)...)
		_, err := Parse("big.yaml", data)
		want := fmt.Sprintf("big.yaml: file is %d bytes, larger than the limit of 1048576 bytes (1 MiB) (hint: split the pipeline or move data out of the file)", len(data))
		if err == nil || err.Error() != want {
			t.Errorf("got %v\nwant %s", err, want)
		}
	})
	t.Run("steps", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("steps:\n")
		for i := range MaxSteps + 2 {
			fmt.Fprintf(&b, "  - {key: s%d, command: x}\n", i)
		}
		_, err := Parse("many.yaml", []byte(b.String()))
		want := fmt.Sprintf("many.yaml:%d:5: too many steps: a pipeline has at most 500 (hint: split the work into fewer, larger steps)", MaxSteps+2)
		if err == nil || err.Error() != want {
			t.Errorf("got %v\nwant %s", err, want)
		}
		b.Reset()
		b.WriteString("steps:\n")
		for i := range MaxSteps {
			fmt.Fprintf(&b, "  - {key: s%d, command: x}\n", i)
		}
		p, err := Parse("max.yaml", []byte(b.String()))
		if err != nil || len(p.Steps()) != MaxSteps {
			t.Errorf("500 steps: %v", err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("steps:\n  - key: a\n    command: x\n")
		for i := range 150 {
			fmt.Fprintf(&b, "    bad%d: 1\n", i)
		}
		_, err := Parse("noisy.yaml", []byte(b.String()))
		var errs *Errors
		if !errors.As(err, &errs) || len(errs.List) != maxErrors+1 {
			t.Fatalf("got %d errors", len(errs.List))
		}
		if last := errs.List[maxErrors].Error(); last != "noisy.yaml: too many errors; only the first 100 are shown" {
			t.Errorf("last = %q", last)
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata/valid", "testdata/invalid"} {
		files, _ := filepath.Glob(dir + "/*.yaml")
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			var errs *Errors
			if !errors.As(err, &errs) || len(errs.List) == 0 {
				t.Fatalf("error is %T %v, want a non-empty *Errors", err, err)
			}
			if p != nil {
				t.Fatal("pipeline and error both returned")
			}
			return
		}
		ctxs := []Context{{}, {Branch: "main", Tag: "v1", Event: "push", Env: map[string]string{"A": "b"}}}
		for _, ctx := range ctxs {
			steps, err := p.Resolve(ctx)
			if err != nil {
				t.Fatalf("Resolve of a parsed pipeline failed: %v", err)
			}
			checkSteps(t, steps)
		}
		if got := len(p.Steps()); got != p.NumSteps() {
			t.Fatalf("Steps() has %d steps, NumSteps() = %d", got, p.NumSteps())
		}
	})
}

// checkSteps checks the invariants of resolved steps: a bounded number,
// unique keys, commands xor approval, needs that exist and form no cycle.
func checkSteps(t *testing.T, steps []*kilnv1.StepSpec) {
	t.Helper()
	if len(steps) == 0 || len(steps) > MaxSteps {
		t.Fatalf("valid pipeline with %d steps", len(steps))
	}
	index := map[string]int{}
	for i, s := range steps {
		if _, dup := index[s.Key]; dup || !stepKeyRE.MatchString(s.Key) || len(s.Key) > maxKeyLen {
			t.Fatalf("bad or duplicate key %q", s.Key)
		}
		index[s.Key] = i
		// Exactly one of: commands (or a buildspec), an approval gate, a
		// deploy block (with its own commands and environment).
		kinds := 0
		for _, has := range []bool{len(s.Commands) > 0 || s.Buildspec != "", s.Approval != nil, s.Deploy != nil} {
			if has {
				kinds++
			}
		}
		if s.Retry == nil || kinds != 1 || (s.Deploy != nil && (len(s.Deploy.Commands) == 0 || s.Deploy.Environment == "")) {
			t.Fatalf("invalid step accepted: %v", s)
		}
	}
	// Kahn's algorithm: every step must become ready.
	indeg := make([]int, len(steps))
	users := make([][]int, len(steps))
	for i, s := range steps {
		if !slices.IsSorted(s.Needs) || len(slices.Compact(slices.Clone(s.Needs))) != len(s.Needs) {
			t.Fatalf("needs of %s not sorted and unique: %v", s.Key, s.Needs)
		}
		for _, n := range s.Needs {
			j, ok := index[n]
			if !ok || j == i {
				t.Fatalf("step %s needs %q", s.Key, n)
			}
			indeg[i]++
			users[j] = append(users[j], i)
		}
	}
	var ready []int
	for i, d := range indeg {
		if d == 0 {
			ready = append(ready, i)
		}
	}
	done := 0
	for len(ready) > 0 {
		i := ready[len(ready)-1]
		ready = ready[:len(ready)-1]
		done++
		for _, u := range users[i] {
			if indeg[u]--; indeg[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if done != len(steps) {
		t.Fatalf("needs cycle accepted: %d of %d steps reachable", done, len(steps))
	}
}
