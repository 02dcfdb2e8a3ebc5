package bench

import (
	"context"
	"testing"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestManyConcurrentJobsFinishOnTheirFirstAttempt: 50 light agents run 200
// one-line jobs at once on 3 coordinators. Every job passes on its first
// attempt: no session ends because the log copies to a peer were busy
// (before logrepl waited for a copy slot, a 9th concurrent log copy to a
// peer failed the agent's session and its jobs were declared lost).
func TestManyConcurrentJobsFinishOnTheirFirstAttempt(t *testing.T) {
	c, events := startLoadT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := Load(ctx, c.Client(), events, 200, 32, 0); err != nil {
		t.Fatal(err)
	}
	builds, _ := c.Leader().C.Store().BuildsPage(0, 1000, 1<<30)
	if len(builds) != 200 {
		t.Fatalf("%d builds, want 200", len(builds))
	}
	for _, b := range builds {
		for _, j := range b.GetJobs() {
			if j.GetState() != kilnv1.JobState_JOB_STATE_PASSED || j.GetAttempt() != 1 {
				t.Errorf("job %s: %s on attempt %d (%s)", j.GetId(), j.GetState(), j.GetAttempt(), j.GetReason())
			}
		}
	}
}
