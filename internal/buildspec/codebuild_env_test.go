package buildspec

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The script fills CodeBuild's build and source variables from the KILN_*
// variables the agent sets; variables already set are kept.
func TestScriptSetsCodeBuildVariables(t *testing.T) {
	src := "version: 0.2\nphases:\n  build:\n    commands:\n" +
		"      - echo \"id=$CODEBUILD_BUILD_ID n=$CODEBUILD_BUILD_NUMBER rsv=$CODEBUILD_RESOLVED_SOURCE_VERSION sv=$CODEBUILD_SOURCE_VERSION" +
		" ev=$CODEBUILD_WEBHOOK_EVENT head=$CODEBUILD_WEBHOOK_HEAD_REF trig=$CODEBUILD_WEBHOOK_TRIGGER url=$CODEBUILD_SOURCE_REPO_URL\"\n"
	s, _, err := Parse("buildspec.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	script := strings.Join(s.Step().Commands, "\n")
	kiln := []string{"KILN_BUILD_ID=42", "KILN_BUILD_NAME=buildspec", "KILN_BUILD_NUMBER=7", "KILN_COMMIT=0123abc",
		"KILN_BRANCH=main", "KILN_REPO=web"}
	for _, shell := range shells(t) {
		for _, tc := range []struct {
			env  []string
			want string
		}{
			{append(kiln, "KILN_EVENT=push"),
				"id=buildspec:42 n=7 rsv=0123abc sv=main ev=PUSH head=refs/heads/main trig=branch/main url=web"},
			{append(kiln, "KILN_EVENT=manual", "CODEBUILD_SOURCE_VERSION=pr/9"),
				"id=buildspec:42 n=7 rsv=0123abc sv=pr/9 ev= head= trig= url=web"},
			{[]string{"KILN_BUILD_ID=3", "KILN_TAG=v1", "KILN_COMMIT=ff", "KILN_EVENT=push"},
				"id=kiln:3 n= rsv=ff sv=v1 ev=PUSH head=refs/tags/v1 trig=tag/v1 url="},
		} {
			cmd := exec.Command(shell, "-e", "-c", script)
			cmd.Dir = t.TempDir()
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", shell, err, out)
			}
			if !strings.Contains(string(out), tc.want+"\n") {
				t.Errorf("%s %v: output lacks %q:\n%s", shell, tc.env, tc.want, out)
			}
		}
	}
}
