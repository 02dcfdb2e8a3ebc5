package yamlpos

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// decoded is what Decode returned and reported, as text.
func decoded(data string) (root string, problems []string) {
	n := Decode([]byte(data),
		func(line int, msg string) { problems = append(problems, fmt.Sprintf("syntax %d: %s", line, msg)) },
		func(doc *yaml.Node) { problems = append(problems, fmt.Sprintf("extra at %d:%d", doc.Line, doc.Column)) })
	if n == nil {
		return "<nil>", problems
	}
	return KindName(n), problems
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in, root string
		problems []string
	}{
		{"", "<nil>", nil},
		{"~\n", "<nil>", nil},
		{"# only a comment\n", "<nil>", nil},
		{"a: 1\n", "a mapping", nil},
		{"- a\n", "a list", nil},
		{"a: b\n\tc: d\n", "<nil>", []string{"syntax 2: found a tab character that violates indentation"}},
		{"a: [\n", "<nil>", []string{"syntax 1: did not find expected node content"}},
		// The second document is reported at its "---".
		{"a: 1\n---\nb: 2\n", "a mapping", []string{"extra at 2:1"}},
		{"a: 1\n---\nb: 2\n---\nc: 3\n", "a mapping", []string{"extra at 2:1"}},
		{"a: 1\n---\nb: 2\nc: [\n", "a mapping", []string{"syntax 4: did not find expected node content"}},
	} {
		root, problems := decoded(tc.in)
		if root != tc.root || !slices.Equal(problems, tc.problems) {
			t.Errorf("Decode(%q) = %s, %q; want %s, %q", tc.in, root, problems, tc.root, tc.problems)
		}
	}
}

func TestFields(t *testing.T) {
	var doc yaml.Node
	src := "name: x\nnmae: y\n[a]: 1\n<<: {b: 2}\nname: z\nzzz: 0\nrun_as: u\n"
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	errorf := func(n *yaml.Node, hint, format string, args ...any) {
		got = append(got, fmt.Sprintf("%d:%d: %s (hint: %s)", n.Line, n.Column, fmt.Sprintf(format, args...), hint))
	}
	f := Fields(doc.Content[0], Keys{
		What:          "the file",
		Known:         []string{"name", "run-as"},
		Fold:          func(s string) string { return strings.ReplaceAll(s, "_", "-") },
		NonScalarHint: "write a word",
	}, errorf)
	want := []string{
		`2:1: unknown key "nmae" in the file (hint: did you mean "name"?)`,
		`3:1: the file has a key that is a list (hint: write a word)`,
		`4:1: merge keys (<<) are not supported (hint: repeat the values instead)`,
		`5:1: duplicate key "name" in the file (first at line 1) (hint: )`,
		`6:1: unknown key "zzz" in the file (hint: known keys: name, run-as)`,
		`7:1: unknown key "run_as" in the file (hint: did you mean "run-as"?)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(f) != 1 || f["name"].Val.Value != "x" || f["name"].Key.Line != 1 {
		t.Errorf("fields = %v", f)
	}
}

func TestClosest(t *testing.T) {
	keys := []string{"commands", "command", "env", "pre_build"}
	dash := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	for _, tc := range []struct {
		s    string
		fold func(string) string
		want string
	}{
		{"comands", nil, "commands"},
		{"comman", nil, "command"},
		{"COMMANDZ", nil, "commands"},
		{"ebv", nil, "env"},
		{"ebb", nil, ""}, // 2 edits: too many for a 3-byte word
		{"pre-build", nil, "pre_build"},
		{"pre-biuld", nil, ""},
		{"pre-biuld", dash, "pre_build"},
		{strings.Repeat("x", 10000), nil, ""},
		{"", nil, ""},
	} {
		if got := Closest(tc.s, keys, tc.fold); got != tc.want {
			t.Errorf("Closest(%.20q) = %q, want %q", tc.s, got, tc.want)
		}
	}
	// Ties go to the first nearest candidate.
	if got := Closest("ab", []string{"abcd", "ac", "ad"}, nil); got != "ac" {
		t.Errorf("Closest(ab) = %q, want ac", got)
	}
	// Candidates are compared as written: only s is lower-cased.
	if got := Closest("build", []string{"BUILD"}, nil); got != "" {
		t.Errorf("Closest(build, [BUILD]) = %q, want none", got)
	}
}

func TestKindName(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte("[a, 1, 1.5, true, ~, !!binary aGk=, {}, [], &x 1, *x]"), &doc); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range doc.Content[0].Content {
		got = append(got, KindName(n))
	}
	want := []string{"a string", "an integer", "a number", "a boolean", "null", "a scalar", "a mapping", "a list", "an integer", "an alias"}
	if !slices.Equal(got, want) {
		t.Errorf("KindName: %q, want %q", got, want)
	}
	if KindName(&doc) != "a document" || !IsNull(doc.Content[0].Content[4]) || IsNull(doc.Content[0].Content[0]) {
		t.Error("KindName(document) or IsNull")
	}
}
