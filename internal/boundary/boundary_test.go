package boundary

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const module = "github.com/kiln-ci/kiln"

// rule forbids the packages under from (module-relative) to depend, directly
// or transitively, on module packages matched by forbidden; with only set,
// every module dependency must be under one of only instead.
type rule struct {
	from      string
	forbidden []string
	only      []string
	// exempt lists module-relative packages (and their subtrees) the rule
	// skips: wiring that assembles the parts.
	exempt []string
}

// The boundaries. cmd/ and bench/ are wiring and are not constrained;
// coordinator/clustertest starts whole clusters for tests and benchmarks.
var rules = []rule{
	{from: "agent", forbidden: []string{"coordinator", "cli"}},
	{from: "cli", forbidden: []string{"coordinator", "agent"}},
	{from: "proto", only: []string{"proto"}},
	{from: "coordinator", forbidden: []string{"cli"}, exempt: []string{"coordinator/clustertest"}},
	{from: "internal", forbidden: []string{"coordinator", "agent", "cli"}},
}

// under reports whether the import path pkg is the module-relative dir or
// below it.
func under(pkg, dir string) bool {
	p := module + "/" + dir
	return pkg == p || strings.HasPrefix(pkg, p+"/")
}

// violations applies rules to a map from package to its dependencies.
func violations(rules []rule, deps map[string][]string) []string {
	var out []string
	for pkg, ds := range deps {
		for _, r := range rules {
			if !under(pkg, r.from) || exempted(pkg, r.exempt) {
				continue
			}
			for _, d := range ds {
				if !strings.HasPrefix(d, module+"/") {
					continue
				}
				bad := false
				for _, f := range r.forbidden {
					bad = bad || under(d, f)
				}
				if r.only != nil {
					ok := false
					for _, o := range r.only {
						ok = ok || under(d, o)
					}
					bad = bad || !ok
				}
				if bad {
					out = append(out, pkg+" -> "+d)
				}
			}
		}
	}
	return out
}

func exempted(pkg string, exempt []string) bool {
	for _, e := range exempt {
		if under(pkg, e) {
			return true
		}
	}
	return false
}

func TestImportBoundaries(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	cmd := exec.Command(gobin, "list", "-e", "-f", `{{.ImportPath}} {{join .Deps " "}}`, module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	deps := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 {
			deps[fields[0]] = fields[1:]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	// Guard against a silently empty listing.
	for _, p := range []string{"agent", "cli", "coordinator", "proto/kiln/v1", "internal/pipeline"} {
		if _, ok := deps[module+"/"+p]; !ok {
			t.Fatalf("go list did not report %s/%s", module, p)
		}
	}
	for _, v := range violations(rules, deps) {
		t.Errorf("forbidden import: %s", v)
	}
}

// TestViolations checks the checker on made-up packages.
func TestViolations(t *testing.T) {
	m := func(s string) string { return module + "/" + s }
	tests := []struct {
		name string
		deps map[string][]string
		want int
	}{
		{"agent on coordinator", map[string][]string{m("agent/x"): {m("coordinator/state")}}, 1},
		{"agent on internal and proto", map[string][]string{m("agent"): {m("internal/leader"), m("proto/kiln/v1"), "fmt"}}, 0},
		{"cli on agent", map[string][]string{m("cli"): {m("agent/executor")}}, 1},
		{"proto on internal", map[string][]string{m("proto/kiln/v1"): {m("internal/leader")}}, 1},
		{"proto on proto and std", map[string][]string{m("proto/kiln/fsm/v1"): {m("proto/kiln/v1"), "google.golang.org/protobuf/proto"}}, 0},
		{"coordinator on cli", map[string][]string{m("coordinator/api"): {m("cli")}}, 1},
		{"clustertest is wiring", map[string][]string{m("coordinator/clustertest"): {m("cli")}}, 0},
		{"cmd is wiring", map[string][]string{m("cmd/kilnctl"): {m("cli"), m("coordinator")}}, 0},
		{"prefix is not a parent", map[string][]string{m("agentx"): {m("coordinator")}, m("agent"): {m("clients")}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := violations(rules, tt.deps); len(got) != tt.want {
				t.Fatalf("violations = %v, want %d", got, tt.want)
			}
		})
	}
}
