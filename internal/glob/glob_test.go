package glob

import "testing"

func TestGlobMatch(t *testing.T) {
	cases := []struct {
		pat, path string
		want      bool
	}{
		{"a.txt", "a.txt", true},
		{"a.txt", "d/a.txt", false},
		{"./a.txt", "a.txt", true},
		{"*.txt", "a.txt", true},
		{"*.txt", ".hidden.txt", true},
		{"*.txt", "d/a.txt", false},
		{"d/*.txt", "d/a.txt", true},
		{"d/*", "d/e/a.txt", false},
		{"?.txt", "a.txt", true},
		{"?.txt", "ab.txt", false},
		{"[ab].txt", "b.txt", true},
		{"[ab].txt", "c.txt", false},
		{"[!ab].txt", "c.txt", true},
		{"[a-c]/x", "b/x", true},
		{"**", "a", true},
		{"**", "a/b/c", true},
		{"**/*.log", "x.log", true},
		{"**/*.log", "a/b/x.log", true},
		{"**/*.log", "a/b/x.txt", false},
		{"out/**", "out/a", true},
		{"out/**", "out/a/b", true},
		{"out/**", "outx/a", false},
		{"out/", "out/a/b", true},
		{"a/**/b", "a/b", true},
		{"a/**/b", "a/x/y/b", true},
		{"a/**/b", "a/x/y/c", false},
		{"a/**/**/b", "a/x/b", true},
		{"a**b/c", "axxb/c", true},
		{`\*.txt`, "*.txt", true},
		{`\*.txt`, "a.txt", false},
	}
	for _, c := range cases {
		g, err := Compile(c.pat)
		if err != nil {
			t.Fatalf("%q: %v", c.pat, err)
		}
		if got := g.Match(c.path); got != c.want {
			t.Errorf("%q matches %q = %v, want %v", c.pat, c.path, got, c.want)
		}
	}
	for _, bad := range []string{"", "/abs/*", "../x", "a/../../x", "[", "."} {
		if _, err := Compile(bad); err == nil {
			t.Errorf("Compile(%q) accepted", bad)
		}
	}
	prefix := []struct {
		pat, dir string
		want     bool
	}{
		{"out/*.txt", "out", true},
		{"out/*.txt", "src", false},
		{"out/*.txt", "out/sub", false},
		{"**/x", "a/b", true},
		{"a/*/c", "a/b", true},
		{"a/*/c", "a/b/c", false},
	}
	for _, c := range prefix {
		g, _ := Compile(c.pat)
		if got := g.MayContain(c.dir); got != c.want {
			t.Errorf("%q may contain %q = %v, want %v", c.pat, c.dir, got, c.want)
		}
	}
}
