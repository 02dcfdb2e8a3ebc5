package deployments

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string // bin/ of docker/prepare.sh: binaries and busybox
	buildErr  error
	// rootDir is a temporary directory removed by TestMain.
	rootDir string
)

func TestMain(m *testing.M) {
	var err error
	rootDir, err = os.MkdirTemp("", "kiln-deployments-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(rootDir)
	os.Exit(code)
}

var (
	hostOnce sync.Once
	hostDir  string // binaries built as integration/ builds them
	hostErr  error
)

// hostBinaries builds kiln-coordinator, kiln-agent and kilnctl once with
// the plain go build integration/ uses (the compiled packages come from the
// same build cache) and returns their directory: enough to read flags and
// to verify units, without the static build the images need.
func hostBinaries(t *testing.T) string {
	t.Helper()
	hostOnce.Do(func() {
		hostDir = filepath.Join(rootDir, "host")
		cmd := exec.Command("go", "build", "-o", hostDir+string(filepath.Separator),
			"./cmd/kiln-coordinator", "./cmd/kiln-agent", "./cmd/kilnctl")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			hostErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if hostErr != nil {
		t.Fatal(hostErr)
	}
	return hostDir
}

// binaries builds the static binaries (and copies busybox) once with
// docker/prepare.sh and returns the directory holding them.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir = filepath.Join(rootDir, "bin")
		cmd := exec.Command("sh", "docker/prepare.sh", buildDir)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("docker/prepare.sh: %w\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// usageFlagRE matches a flag line of the standard flag package's usage.
var usageFlagRE = regexp.MustCompile(`(?m)^  -([A-Za-z0-9][A-Za-z0-9_.-]*)`)

var (
	flagsMu    sync.Mutex
	flagsCache = map[string]map[string]bool{}
)

// flagsOf returns the flags the binary (kiln-coordinator or kiln-agent)
// accepts, read from its -h output: what the binary really parses, so a
// flag renamed or removed in cmd/ fails the tests here.
func flagsOf(t *testing.T, binary string) map[string]bool {
	t.Helper()
	flagsMu.Lock()
	defer flagsMu.Unlock()
	if f, ok := flagsCache[binary]; ok {
		return f
	}
	out, err := exec.Command(filepath.Join(hostBinaries(t), binary), "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -h: %v\n%s", binary, err, out)
	}
	set := map[string]bool{}
	for _, m := range usageFlagRE.FindAllStringSubmatch(string(out), -1) {
		set[m[1]] = true
	}
	if len(set) < 5 {
		t.Fatalf("%s -h lists %d flags; usage format changed?\n%s", binary, len(set), out)
	}
	flagsCache[binary] = set
	return set
}

// checkFlags reports every --name or --name=value argument that binary
// does not accept. where locates the arguments in messages.
func checkFlags(t *testing.T, where, binary string, args []string) int {
	t.Helper()
	known := flagsOf(t, binary)
	n := 0
	for _, a := range args {
		name, ok := flagName(a)
		if !ok {
			continue
		}
		n++
		if !known[name] {
			t.Errorf("%s: %s has no flag --%s", where, binary, name)
		}
	}
	return n
}

// flagName returns the flag an argument sets: "--a-b=x" and "-a-b" give a-b.
func flagName(arg string) (string, bool) {
	if len(arg) < 2 || arg[0] != '-' || arg == "--" {
		return "", false
	}
	name := arg[1:]
	if name[0] == '-' {
		name = name[1:]
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '=' {
			name = name[:i]
			break
		}
	}
	return name, name != ""
}
