package executor

import (
	"slices"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestBaseEnvKeepsOnlyTheAllowList(t *testing.T) {
	environ := []string{
		"PATH=/bin", "HOME=/root", "LC_ALL=C", "LANG=C.UTF-8",
		"AWS_SECRET_ACCESS_KEY=leak", "KILN_S3_SECRET_KEY=leak", "KILN_JOIN_TOKEN=leak", "GITHUB_TOKEN=leak",
		"CI_CACHE_DIR=/cache", "CI_X=1", "=weird", "noequals",
	}
	got := BaseEnv(environ, nil)
	want := []string{"PATH=/bin", "HOME=/root", "LC_ALL=C", "LANG=C.UTF-8"}
	if !slices.Equal(got, want) {
		t.Fatalf("BaseEnv = %q, want %q", got, want)
	}
	got = BaseEnv(environ, []string{"CI_*"})
	want = append(want, "CI_CACHE_DIR=/cache", "CI_X=1")
	if !slices.Equal(got, want) {
		t.Fatalf("BaseEnv with CI_* = %q, want %q", got, want)
	}
	for _, bad := range []string{"", "A=B", "[x"} {
		if ValidatePassEnv([]string{bad}) == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
	if err := ValidatePassEnv([]string{"CI_*", "SSH_AUTH_SOCK"}); err != nil {
		t.Error(err)
	}
}

// TestJobsDoNotSeeTheAgentsSecrets: with no explicit base environment the
// executor gives jobs only the allow-listed part of its own environment.
func TestJobsDoNotSeeTheAgentsSecrets(t *testing.T) {
	t.Setenv("KILN_S3_SECRET_KEY", "s3cr3t")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
	t.Setenv("LANG", "C")
	e := newExec(t)
	e.Env = nil
	o, out := run(t, e, Spec{JobID: "1.env", Attempt: 1, Env: map[string]string{"STEP": "yes"}, Commands: []string{
		`echo "${KILN_S3_SECRET_KEY:-none} ${AWS_SECRET_ACCESS_KEY:-none} $LANG $STEP $KILN_ATTEMPT"`,
	}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome = %+v, output %q", o, out)
	}
	if want := "none none C yes 1\n"; out != want {
		t.Fatalf("output = %q, want %q", out, want)
	}
}
