package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/internal/pipeline"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// StatsJSON is `kilnctl stats -o json`: durations in milliseconds.
type StatsJSON struct {
	From       string `json:"from"`
	To         string `json:"to"`
	Builds     int32  `json:"builds"`
	Passed     int32  `json:"passed"`
	Failed     int32  `json:"failed"`
	Canceled   int32  `json:"canceled"`
	Unfinished int32  `json:"unfinished"`
	// BuildTime: passed and failed builds, first job start to finish.
	BuildTime DurationJSON `json:"build_time"`
	// QueueWait: jobs, queued to started.
	QueueWait DurationJSON `json:"queue_wait"`
	Stages    []StageJSON  `json:"stages"`
	// Deployments counts production deploy steps that passed;
	// FailedDeployments those that failed, timed out or were lost.
	Deployments       int32 `json:"deployments"`
	FailedDeployments int32 `json:"failed_deployments"`
	// Changes counts distinct commits that reached production.
	Changes int32 `json:"changes"`
	// LeadTime: build creation to the production deployment's finish.
	LeadTime          DurationJSON `json:"lead_time"`
	ChangeFailureRate float64      `json:"change_failure_rate"`
	TimeToRestore     DurationJSON `json:"time_to_restore"`
	Unrestored        int32        `json:"unrestored"`
}

// DurationJSON summarizes durations.
type DurationJSON struct {
	Count int32 `json:"count"`
	AvgMs int64 `json:"avg_ms"`
	P90Ms int64 `json:"p90_ms"`
}

// StageJSON is one stage's timing.
type StageJSON struct {
	Stage          int32        `json:"stage"`
	Steps          []string     `json:"steps"`
	Duration       DurationJSON `json:"duration"`
	FromBuildStart DurationJSON `json:"from_build_start"`
}

func toDurationJSON(d *kilnv1.DurationStats) DurationJSON {
	return DurationJSON{Count: d.GetCount(), AvgMs: d.GetAvgMs(), P90Ms: d.GetP90Ms()}
}

func toStatsJSON(s *kilnv1.DeliveryStats) StatsJSON {
	out := StatsJSON{
		From: rfc3339(s.GetFromUnixMs()), To: rfc3339(s.GetToUnixMs()),
		Builds: s.GetBuilds(), Passed: s.GetPassed(), Failed: s.GetFailed(), Canceled: s.GetCanceled(), Unfinished: s.GetUnfinished(),
		BuildTime: toDurationJSON(s.GetBuildTime()), QueueWait: toDurationJSON(s.GetQueueWait()), Stages: []StageJSON{},
		Deployments: s.GetDeployments(), FailedDeployments: s.GetFailedDeployments(), Changes: s.GetChanges(),
		LeadTime: toDurationJSON(s.GetLeadTime()), ChangeFailureRate: s.GetChangeFailureRate(),
		TimeToRestore: toDurationJSON(s.GetTimeToRestore()), Unrestored: s.GetUnrestored(),
	}
	for _, st := range s.GetStages() {
		steps := st.GetSteps()
		if steps == nil {
			steps = []string{}
		}
		out.Stages = append(out.Stages, StageJSON{Stage: st.GetStage(), Steps: steps,
			Duration: toDurationJSON(st.GetDuration()), FromBuildStart: toDurationJSON(st.GetFromBuildStart())})
	}
	return out
}

func (a *app) statsCommand() *cobra.Command {
	var (
		output, repo, pipelineName, since string
	)
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Delivery statistics: builds, build and stage times, deployments, lead time, change failure rate, time to restore",
		Long: "stats computes delivery statistics from the cluster's build history: builds by\n" +
			"result, average and p90 build time, time per stage and from the first stage to\n" +
			"each stage, queue wait, production deployments (runs of steps marked\n" +
			"`production: true`), changes (commits) reaching production, lead time (build\n" +
			"creation to production), change failure rate and time to restore.",
		Args: exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			req := &kilnv1.GetStatsRequest{Repo: repo, Pipeline: pipelineName, Consistency: a.consistency}
			if since != "" {
				d, err := pipeline.ParseRetention(since)
				if err != nil {
					return usageErrorf("--since: %w (use a Go duration such as 36h or days such as 30d)", err)
				}
				if d > 0 && d < time.Millisecond {
					return usageErrorf("--since: %s is shorter than a millisecond", since)
				}
				req.SinceMs = d.Milliseconds()
			}
			var resp *kilnv1.GetStatsResponse
			err := a.ops(cmd.Context(), "get stats", func(ctx context.Context, c kilnv1.OpsServiceClient) error {
				r, err := c.GetStats(ctx, req)
				resp = r
				return err
			})
			if err != nil {
				return err
			}
			s := toStatsJSON(resp.GetStats())
			if structured(output) {
				return writeOutput(a.stdout, output, s)
			}
			return printStats(a, s)
		}),
	}
	addOutputFlag(cmd, &output)
	cmd.Flags().StringVar(&repo, "repo", "", "only builds of this registered repository")
	cmd.Flags().StringVar(&pipelineName, "pipeline", "", "only builds of this pipeline (build name)")
	cmd.Flags().StringVar(&since, "since", "", "only builds created within this long before now: 30d, 36h... (default: all history)")
	return cmd
}

func ms(v int64) string {
	d := time.Duration(v) * time.Millisecond
	if d >= time.Second {
		d = d.Round(time.Second)
	}
	return d.String()
}

func durationLine(d DurationJSON, what string) string {
	if d.Count == 0 {
		return "- (no " + what + ")"
	}
	return fmt.Sprintf("avg %s, p90 %s (%d %s)", ms(d.AvgMs), ms(d.P90Ms), d.Count, what)
}

func printStats(a *app, s StatsJSON) error {
	t := newTable(a.stdout)
	window := "all history"
	if s.From != "" {
		window = s.From + " to " + s.To
	}
	fmt.Fprintf(t, "WINDOW\t%s\n", window)
	fmt.Fprintf(t, "BUILDS\t%d (passed %d, failed %d, canceled %d, unfinished %d)\n", s.Builds, s.Passed, s.Failed, s.Canceled, s.Unfinished)
	fmt.Fprintf(t, "BUILD TIME\t%s\n", durationLine(s.BuildTime, "builds"))
	fmt.Fprintf(t, "QUEUE WAIT\t%s\n", durationLine(s.QueueWait, "jobs"))
	fmt.Fprintf(t, "DEPLOYMENTS\t%d to production, %d failed\n", s.Deployments, s.FailedDeployments)
	fmt.Fprintf(t, "CHANGES\t%d reached production\n", s.Changes)
	fmt.Fprintf(t, "LEAD TIME\t%s\n", durationLine(s.LeadTime, "deployments"))
	cfr := "-"
	if s.Deployments+s.FailedDeployments > 0 {
		cfr = fmt.Sprintf("%.1f%%", 100*s.ChangeFailureRate)
	}
	fmt.Fprintf(t, "CHANGE FAILURE RATE\t%s\n", cfr)
	fmt.Fprintf(t, "TIME TO RESTORE\t%s; %d unrestored\n", durationLine(s.TimeToRestore, "restores"), s.Unrestored)
	if err := t.Flush(); err != nil {
		return err
	}
	if len(s.Stages) == 0 {
		return nil
	}
	fmt.Fprintln(a.stdout)
	t = newTable(a.stdout)
	fmt.Fprintln(t, "STAGE\tSTEPS\tRUNS\tAVG\tP90\tFROM BUILD START (AVG)")
	for _, st := range s.Stages {
		fmt.Fprintf(t, "%d\t%s\t%d\t%s\t%s\t%s\n", st.Stage, strings.Join(st.Steps, ","), st.Duration.Count,
			ms(st.Duration.AvgMs), ms(st.Duration.P90Ms), ms(st.FromBuildStart.AvgMs))
	}
	return t.Flush()
}
