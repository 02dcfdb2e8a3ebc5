package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-ci/kiln/internal/authn"
)

func TestContexts(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sub", "config.yaml")
	t.Setenv(EnvConfig, cfgPath)
	t.Setenv(EnvCoordinators, "")
	f := newFake()
	f.addBuild(sampleBuild())
	addr := f.serve(t)
	tokFile := filepath.Join(dir, "token")
	tok, _, err := authn.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runCLI(t, "config", "set-context", "prod", "--coordinators", addr+","+addr, "--token-file", tokFile)
	must(t, code, 0, errOut)
	if out != "context prod created in "+cfgPath+" (in use)\n" {
		t.Errorf("stdout = %q", out)
	}
	st, err := os.Stat(cfgPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file %v mode %v, want 0600", err, st.Mode().Perm())
	}
	data, _ := os.ReadFile(cfgPath)
	if strings.Contains(string(data), tok) {
		t.Errorf("the token itself is in the config file:\n%s", data)
	}
	// No flags, no variables: the context's coordinators are used.
	out, errOut, code = runCLI(t, "status", "7")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "BUILD      7") {
		t.Errorf("status via context:\n%s", out)
	}
	// The token comes from the context's token file.
	a := &app{stderr: io.Discard}
	if got, err := a.tokenValue(); err != nil || got != tok {
		t.Errorf("token from context = %q, %v", got, err)
	}
	// A second context; use-context switches; --context picks one for a command.
	_, errOut, code = runCLI(t, "config", "set-context", "dead", "--coordinators", "127.0.0.1:1")
	must(t, code, 0, errOut)
	out, errOut, code = runCLI(t, "config", "get-contexts")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "*        prod") || !strings.Contains(out, "dead") {
		t.Errorf("get-contexts:\n%s", out)
	}
	_, errOut, code = runCLI(t, "config", "use-context", "dead")
	must(t, code, 0, errOut)
	_, errOut, code = runCLI(t, "--dial-timeout", "100ms", "status", "7")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, "no coordinator reachable at 127.0.0.1:1") {
		t.Errorf("stderr = %q", errOut)
	}
	_, errOut, code = runCLI(t, "--context", "prod", "status", "7")
	must(t, code, 0, errOut)
	// Variables win over the context.
	t.Setenv(EnvCoordinators, addr)
	_, errOut, code = runCLI(t, "status", "7")
	must(t, code, 0, errOut)
	out, _, _ = runCLI(t, "config", "current-context")
	if out != "dead\n" {
		t.Errorf("current-context = %q", out)
	}
	// Mistakes: exit 2 with a hint, the file unchanged.
	before, _ := os.ReadFile(cfgPath)
	for _, args := range [][]string{
		{"config", "use-context", "nosuch"},
		{"--context", "nosuch", "builds"},
		{"config", "set-context", "new"}, // no coordinators
		{"config", "set-context", "bad name", "--coordinators", "x:1"},
		{"config", "set-context", "x", "--coordinators", "x:1", "--token-file", filepath.Join(dir, "missing")},
	} {
		_, errOut, code := runCLI(t, args...)
		if code != 2 || strings.Count(errOut, "kilnctl:") != 1 {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	if after, _ := os.ReadFile(cfgPath); string(after) != string(before) {
		t.Errorf("a refused command changed the config:\n%s", after)
	}
	_, errOut, code = runCLI(t, "config", "delete-context", "dead")
	must(t, code, 0, errOut)
	if _, _, code := runCLI(t, "config", "current-context"); code != 1 {
		t.Errorf("current-context after deleting it: exit %d", code)
	}
}
