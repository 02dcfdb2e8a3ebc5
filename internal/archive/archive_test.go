package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIgnoreMatcher(t *testing.T) {
	ig, err := ParseIgnore(strings.NewReader(`# comment
*.log
/build
out/
docs/**/*.tmp
**/cache
a?c.txt
!keep.log
node_modules/
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		dir  bool
		want bool
	}{
		{"x.log", false, true},
		{"sub/deep/x.log", false, true},
		{"keep.log", false, false},
		{"build", true, true},
		{"build/a.o", false, true},
		{"sub/build", true, false}, // anchored
		{"out", false, false},      // dir-only pattern, a file
		{"out", true, true},
		{"sub/out/x", false, true},
		{"docs/a.tmp", false, true},
		{"docs/a/b/c.tmp", false, true},
		{"a.tmp", false, false},
		{"cache", true, true},
		{"x/y/cache/z", false, true},
		{"abc.txt", false, true},
		{"ab/c.txt", false, false},
		{"abbc.txt", false, false},
		{"src/main.go", false, false},
		{"node_modules/x/y.js", false, true},
		{"#comment", false, false},
	}
	for _, tc := range cases {
		if got := ig.Excluded(tc.path, tc.dir); got != tc.want {
			t.Errorf("Excluded(%q, dir=%v) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

// names lists the entries of a tar.gz, and the unpacked content.
func unpackAll(t *testing.T, data []byte) (string, []string) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	dst := t.TempDir()
	if _, err := Unpack(bytes.NewReader(data), dst, Limits{}); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	return dst, names
}

func TestPackGitRepoHonoursGitignoreAndKilnignore(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	git(t, dir, "init", "-q")
	write(t, dir, map[string]string{
		".gitignore":     "*.o\nbin/\n",
		".kilnignore":    "# local notes\nsecret.txt\ndocs/**/*.tmp\n",
		"main.c":         "int main(){}",
		"main.o":         "object",
		"bin/tool":       "binary",
		"secret.txt":     "password",
		"docs/a/b.tmp":   "tmp",
		"docs/readme.md": "docs",
		"untracked.txt":  "new file",
		"scripts/run.sh": "#!/bin/sh\necho run\n",
	})
	if err := os.Chmod(filepath.Join(dir, "scripts/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("main.c", filepath.Join(dir, "link.c")); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", ".gitignore", "main.c", "docs", "scripts", "link.c")
	git(t, dir, "commit", "-q", "-m", "one")

	var buf bytes.Buffer
	st, err := Pack(dir, &buf)
	if err != nil {
		t.Fatal(err)
	}
	out, names := unpackAll(t, buf.Bytes())
	want := []string{".gitignore", ".kilnignore", "docs/", "docs/readme.md", "link.c", "main.c", "scripts/", "scripts/run.sh", "untracked.txt"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
	if st.Files != 7 {
		t.Errorf("Files = %d, want 7", st.Files)
	}
	if fi, err := os.Stat(filepath.Join(out, "scripts/run.sh")); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("run.sh lost its exec bit: %v %v", fi.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(out, "link.c")); err != nil || target != "main.c" {
		t.Errorf("link.c: %q %v", target, err)
	}
	// Deterministic: packing again gives the same bytes.
	var again bytes.Buffer
	if _, err := Pack(dir, &again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two packs of the same directory differ")
	}
}

func TestPackWithoutGitSkipsDotGit(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, map[string]string{
		".git/config": "not a repo really",
		".kilnignore": "/out\n*.bak\n",
		"a.txt":       "a",
		"out/x":       "x",
		"sub/out/y":   "y",
		"sub/c.bak":   "b",
	})
	if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	_, names := unpackAll(t, buf.Bytes())
	// .git/config is a broken repo: git rev-parse fails, so the walk is used.
	want := []string{".kilnignore", "a.txt", "empty/", "sub/", "sub/out/", "sub/out/y"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q, want %q", names, want)
	}
}

type entry struct {
	name     string
	typ      byte
	body     string
	linkname string
}

func craft(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.linkname, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestUnpackRejectsUnsafeArchives(t *testing.T) {
	many := make([]entry, 11)
	for i := range many {
		many[i] = entry{name: "f" + string(rune('a'+i)), typ: tar.TypeReg, body: "x"}
	}
	cases := []struct {
		name    string
		entries []entry
		want    error
	}{
		{"dotdot", []entry{{name: "../x", typ: tar.TypeReg, body: "evil"}}, ErrUnsafe},
		{"inner dotdot", []entry{{name: "a/../../x", typ: tar.TypeReg, body: "evil"}}, ErrUnsafe},
		{"absolute", []entry{{name: "/tmp/abs", typ: tar.TypeReg, body: "evil"}}, ErrUnsafe},
		{"symlink escape then write through it", []entry{
			{name: "evil", typ: tar.TypeSymlink, linkname: "../../etc"},
			{name: "evil/passwd", typ: tar.TypeReg, body: "root::0:0"},
		}, ErrUnsafe},
		{"symlink absolute", []entry{{name: "abs", typ: tar.TypeSymlink, linkname: "/etc/passwd"}}, ErrUnsafe},
		{"write through inner symlink", []entry{
			{name: "d/", typ: tar.TypeDir},
			{name: "inner", typ: tar.TypeSymlink, linkname: "d"},
			{name: "inner/x", typ: tar.TypeReg, body: "x"},
		}, ErrUnsafe},
		{"hardlink", []entry{
			{name: "a", typ: tar.TypeReg, body: "a"},
			{name: "h", typ: tar.TypeLink, linkname: "a"},
		}, ErrUnsafe},
		{"fifo", []entry{{name: "p", typ: tar.TypeFifo}}, ErrUnsafe},
		{"device", []entry{{name: "d", typ: tar.TypeChar}}, ErrUnsafe},
		{"too many entries", many, ErrLimit},
		{"too large", []entry{{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 101)}}, ErrLimit},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			ws := filepath.Join(root, "a", "b", "ws")
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(ws, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := Unpack(bytes.NewReader(craft(t, tc.entries)), ws, Limits{MaxBytes: 100, MaxEntries: 10})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Unpack: %v, want %v", err, tc.want)
			}
			// Nothing was written outside the workspace.
			for _, p := range []string{"etc/passwd", "a/b/x", "a/x", "x"} {
				if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
					t.Errorf("%s was written outside the workspace", p)
				}
			}
		})
	}
}

func TestUnpackAcceptsInsideLinksAndModes(t *testing.T) {
	ws := t.TempDir()
	data := craft(t, []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "src/", typ: tar.TypeDir},
		{name: "src/a.txt", typ: tar.TypeReg, body: "A"},
		{name: "src/up", typ: tar.TypeSymlink, linkname: "../top.txt"},
		{name: "top.txt", typ: tar.TypeReg, body: "T"},
	})
	st, err := Unpack(bytes.NewReader(data), ws, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 3 || st.Bytes != 2 {
		t.Errorf("stats %+v", st)
	}
	got, err := os.ReadFile(filepath.Join(ws, "src/up"))
	if err != nil || string(got) != "T" {
		t.Fatalf("src/up: %q %v", got, err)
	}
}
