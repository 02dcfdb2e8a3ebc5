package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ops is control for the OpsService (queue and statistics).
func (a *app) ops(ctx context.Context, what string, call func(context.Context, kilnv1.OpsServiceClient) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return a.call(ctx, c, what, "", func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return call(ctx, kilnv1.NewOpsServiceClient(conn))
	})
}

// QueueJSON is `kilnctl queue -o json`.
type QueueJSON struct {
	// Total counts every waiting job; Jobs stops at --limit.
	Total int32           `json:"total"`
	Jobs  []QueuedJobJSON `json:"jobs"`
}

// QueuedJobJSON is one job that has not started.
type QueuedJobJSON struct {
	// Position is the 1-based dispatch order of a queued job; 0 for jobs
	// waiting on needs, an approval or a concurrency group.
	Position     uint32            `json:"position"`
	Build        string            `json:"build"`
	BuildName    string            `json:"build_name"`
	Job          string            `json:"job"`
	Key          string            `json:"key"`
	State        string            `json:"state"`
	WaitingSince string            `json:"waiting_since"`
	WaitedMs     int64             `json:"waited_ms"`
	Labels       map[string]string `json:"labels"`
	// Code is the kind of reason: no_matching_agent, agents_unavailable,
	// agents_busy, dispatching, concurrency_group, needs, approval, deploy.
	Code             string   `json:"code"`
	Reason           string   `json:"reason"`
	MissingLabels    []string `json:"missing_labels,omitempty"`
	Agents           []string `json:"agents,omitempty"`
	ConcurrencyGroup string   `json:"concurrency_group,omitempty"`
	Needs            []string `json:"needs,omitempty"`
}

func toQueueJSON(resp *kilnv1.ListQueueResponse) QueueJSON {
	out := QueueJSON{Total: resp.GetTotal(), Jobs: []QueuedJobJSON{}}
	for _, j := range resp.GetJobs() {
		waited := int64(0)
		if s := j.GetWaitingSinceUnixMs(); s > 0 && resp.GetNowUnixMs() > s {
			waited = resp.GetNowUnixMs() - s
		}
		labels := j.GetAgents()
		if labels == nil {
			labels = map[string]string{}
		}
		r := j.GetReason()
		out.Jobs = append(out.Jobs, QueuedJobJSON{
			Position: j.GetPosition(), Build: j.GetBuildId(), BuildName: j.GetBuildName(), Job: j.GetJobId(), Key: j.GetKey(),
			State: jobState(j.GetState()), WaitingSince: rfc3339(j.GetWaitingSinceUnixMs()), WaitedMs: waited, Labels: labels,
			Code: enumWord(r.GetCode().String(), "WAIT_CODE_"), Reason: r.GetMessage(), MissingLabels: r.GetMissingLabels(),
			Agents: r.GetAgents(), ConcurrencyGroup: r.GetConcurrencyGroup(), Needs: r.GetNeeds(),
		})
	}
	return out
}

func (a *app) queueCommand() *cobra.Command {
	var (
		output string
		limit  int32
	)
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "List the jobs that wait, and why each one waits",
		Long: "queue lists every job that has not started: queued jobs in dispatch order,\n" +
			"then jobs waiting on their needs, an approval or a concurrency group. REASON\n" +
			"says why in words, e.g. \"no agent has ever offered label gpu=true\" or\n" +
			"\"matching agents are all busy: a1 (2/2 slots)\". kilnctl status shows the\n" +
			"same reason for the jobs of one build.",
		Args: exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			if limit < 0 {
				return usageErrorf("--limit must not be negative")
			}
			var resp *kilnv1.ListQueueResponse
			err := a.ops(cmd.Context(), "list queue", func(ctx context.Context, c kilnv1.OpsServiceClient) error {
				r, err := c.ListQueue(ctx, &kilnv1.ListQueueRequest{Limit: limit, Consistency: a.consistency})
				resp = r
				return err
			})
			if err != nil {
				return err
			}
			q := toQueueJSON(resp)
			if output == "json" {
				return writeJSON(a.stdout, q)
			}
			return printQueue(a, q)
		}),
	}
	addOutputFlag(cmd, &output)
	cmd.Flags().Int32Var(&limit, "limit", 0, "show at most this many jobs (default 1000, at most 10000)")
	return cmd
}

func printQueue(a *app, q QueueJSON) error {
	if len(q.Jobs) == 0 {
		fmt.Fprintln(a.stdout, "no job is waiting")
		return nil
	}
	t := newTable(a.stdout)
	fmt.Fprintln(t, "POS\tBUILD\tJOB\tSTATE\tWAITED\tREASON")
	for _, j := range q.Jobs {
		pos := "-"
		if j.Position > 0 {
			pos = fmt.Sprint(j.Position)
		}
		waited := (time.Duration(j.WaitedMs) * time.Millisecond).Round(time.Second).String()
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\n", pos, j.Build, j.Key, j.State, waited, j.Reason)
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if more := int(q.Total) - len(q.Jobs); more > 0 {
		fmt.Fprintf(a.stderr, "%d more waiting job(s) not shown (raise --limit)\n", more)
	}
	return nil
}
