package deployments

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// execStart returns the words of a unit's ExecStart= (continuation lines
// joined). The units keep to plain words: no quoting.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s: no ExecStart=", unit)
	return nil
}

// Every flag ExecStart passes exists, and systemd-analyze verify (where
// installed) accepts each unit with the real binary in place.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob("systemd/*.service")
	if err != nil || len(units) < 2 {
		t.Fatalf("units: %v %v", units, err)
	}
	bin := hostBinaries(t)
	dir := t.TempDir()
	var copies []string
	for _, u := range units {
		words := execStart(t, u)
		binary := filepath.Base(words[0])
		if n := checkFlags(t, u, binary, words[1:]); n < 3 {
			t.Errorf("%s: only %d flags in ExecStart", u, n)
		}
		if words[0] != "/usr/local/bin/"+binary {
			t.Errorf("%s: ExecStart runs %s; the README installs binaries in /usr/local/bin", u, words[0])
		}
		// The unit as installed, but with the binary where it is now.
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		c := filepath.Join(dir, filepath.Base(u))
		text := strings.Replace(string(data), "ExecStart="+words[0], "ExecStart="+filepath.Join(bin, binary), 1)
		if err := os.WriteFile(c, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, c)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the units' flags were checked, systemd-analyze verify was not run")
	}
	for _, c := range copies {
		out, err := exec.Command(analyze, "verify", "--man=no", c).CombinedOutput()
		// verify exits 0 on mere warnings (an unknown key, a bad value):
		// any line about the unit fails the test too.
		var about []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, filepath.Base(c)) {
				about = append(about, l)
			}
		}
		if err != nil || len(about) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", filepath.Base(c), err, out)
		}
	}
}
