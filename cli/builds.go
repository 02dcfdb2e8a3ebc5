package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

const buildNotFoundHint = "list builds with 'kilnctl builds'"

// BuildJSON is a build as `kilnctl status -o json` and `kilnctl builds -o
// json` print it. Times are RFC 3339 (UTC) or empty.
type BuildJSON struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Submitter string `json:"submitter"`
	Created   string `json:"created"`
	Started   string `json:"started"`
	Finished  string `json:"finished"`
	Reason    string `json:"reason"`
	// Source: the registered repository (if any), the git URL, the ref as
	// submitted and the commit it resolved to; archive_sha256 for an
	// uploaded source. Empty for a build without source. Event is what
	// started the build (manual, push, api).
	Repo          string    `json:"repo"`
	GitURL        string    `json:"git_url"`
	Ref           string    `json:"ref"`
	Commit        string    `json:"commit"`
	ArchiveSHA256 string    `json:"archive_sha256,omitempty"`
	Event         string    `json:"event"`
	Jobs          []JobJSON `json:"jobs"`
	// Tests is the summary of the jobs' current attempts' test reports.
	Tests *TestSummaryJSON `json:"tests,omitempty"`
}

// JobJSON is one job of a BuildJSON.
type JobJSON struct {
	ID       string `json:"id"`
	Key      string `json:"key"`
	State    string `json:"state"`
	Attempt  uint32 `json:"attempt"`
	Agent    string `json:"agent"`
	ExitCode int32  `json:"exit_code"`
	Reason   string `json:"reason"`
	// LogBytes and LogLines measure the current attempt's committed log.
	LogBytes uint64 `json:"log_bytes"`
	LogLines uint64 `json:"log_lines"`
	// Approval is the decision on an approval step, once made.
	Approval *ApprovalJSON `json:"approval,omitempty"`
	// Waiting says why a job that has not started waits (as kilnctl
	// queue shows it).
	Waiting string `json:"waiting,omitempty"`
}

// ApprovalJSON is the decision on an approval step.
type ApprovalJSON struct {
	Approved bool   `json:"approved"`
	By       string `json:"by"`
	Comment  string `json:"comment"`
	Time     string `json:"time"`
}

func toBuildJSON(b *kilnv1.Build) BuildJSON {
	out := BuildJSON{
		ID:        b.GetId(),
		Name:      b.GetName(),
		State:     buildState(b.GetState()),
		Submitter: b.GetSubmitter(),
		Created:   rfc3339(b.GetCreatedUnixMs()),
		Started:   rfc3339(b.GetStartedUnixMs()),
		Finished:  rfc3339(b.GetFinishedUnixMs()),
		Reason:    b.GetReason(),
		Jobs:      []JobJSON{},

		Repo:          b.GetSource().GetRepo(),
		GitURL:        b.GetSource().GetGitUrl(),
		Ref:           b.GetSource().GetRef(),
		Commit:        b.GetSource().GetCommit(),
		ArchiveSHA256: b.GetSource().GetArchiveSha256(),
		Event:         b.GetEvent(),
	}
	if ts := b.GetTests(); ts != nil {
		tj := toTestSummaryJSON(ts)
		out.Tests = &tj
	}
	for _, j := range b.GetJobs() {
		jj := JobJSON{
			ID:       j.GetId(),
			Key:      j.GetKey(),
			State:    jobState(j.GetState()),
			Attempt:  j.GetAttempt(),
			Agent:    j.GetAgent(),
			ExitCode: j.GetExitCode(),
			Reason:   j.GetReason(),
			LogBytes: j.GetLogBytes(),
			LogLines: j.GetLogLines(),
			Waiting:  j.GetWaitReason(),
		}
		if ap := j.GetApproval(); ap != nil {
			jj.Approval = &ApprovalJSON{Approved: ap.GetApproved(), By: ap.GetBy(), Comment: ap.GetComment(), Time: rfc3339(ap.GetTimeUnixMs())}
		}
		out.Jobs = append(out.Jobs, jj)
	}
	return out
}

// buildState is the lower-case state word: queued, running, passed...
func buildState(s kilnv1.BuildState) string {
	return enumWord(s.String(), "BUILD_STATE_")
}

// jobState is the lower-case state word: waiting, queued, timed_out...
func jobState(s kilnv1.JobState) string {
	return enumWord(s.String(), "JOB_STATE_")
}

func agentState(s kilnv1.AgentState) string {
	return enumWord(s.String(), "AGENT_STATE_")
}

func enumWord(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

func rfc3339(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// buildDuration is the run time of a build: start to finish, or to now
// while it runs.
func buildDuration(b *kilnv1.Build) string {
	start, end := b.GetStartedUnixMs(), b.GetFinishedUnixMs()
	if start == 0 {
		return "-"
	}
	if end == 0 {
		end = time.Now().UnixMilli()
	}
	if end < start {
		return "-"
	}
	return (time.Duration(end-start) * time.Millisecond).Round(time.Second).String()
}

func writeJSON(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// structured reports whether -o asks for data (json or yaml), not a table.
func structured(output string) bool { return output == "json" || output == "yaml" }

// writeOutput writes v as JSON, or as YAML for -o yaml. The YAML has the
// same keys in the same order as the JSON (it is the JSON document
// re-encoded in block style), so scripts can switch freely.
func writeOutput(w io.Writer, output string, v any) error {
	if output != "yaml" {
		return writeJSON(w, v)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	blockStyle(&doc)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	return enc.Close()
}

// blockStyle clears the flow style the JSON input gave every node, and
// the double quotes of strings that need none.
func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		n.Style &^= yaml.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func (a *app) getBuild(ctx context.Context, c *client.Client, id string) (*kilnv1.Build, error) {
	return controlBuild(ctx, a, c, "get build "+id, buildNotFoundHint, func(ctx context.Context, cs kilnv1.ControlServiceClient) (*kilnv1.GetBuildResponse, error) {
		return cs.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: id, Consistency: a.consistency})
	})
}

// controlBuild is controlOn (control when c is nil) for a call answering
// with a build, which it returns.
func controlBuild[R interface{ GetBuild() *kilnv1.Build }](ctx context.Context, a *app, c *client.Client, what, notFoundHint string,
	call func(context.Context, kilnv1.ControlServiceClient) (R, error)) (*kilnv1.Build, error) {
	var b *kilnv1.Build
	keep := func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
		resp, err := call(ctx, cs)
		if err != nil {
			return err
		}
		b = resp.GetBuild()
		return nil
	}
	var err error
	if c == nil {
		err = a.control(ctx, what, notFoundHint, keep)
	} else {
		err = a.controlOn(ctx, c, what, notFoundHint, keep)
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (a *app) statusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status BUILD",
		Short: "Show a build and its jobs",
		Args:  exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			b, err := a.getBuild(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if structured(output) {
				return writeOutput(a.stdout, output, toBuildJSON(b))
			}
			return printBuild(a.stdout, b)
		}),
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func printBuild(w io.Writer, b *kilnv1.Build) error {
	bj := toBuildJSON(b)
	t := newTable(w)
	fmt.Fprintf(t, "BUILD\t%s\n", bj.ID)
	fmt.Fprintf(t, "NAME\t%s\n", orDash(bj.Name))
	fmt.Fprintf(t, "STATE\t%s\n", bj.State)
	fmt.Fprintf(t, "SUBMITTER\t%s\n", orDash(bj.Submitter))
	if bj.Repo != "" {
		fmt.Fprintf(t, "REPO\t%s\n", bj.Repo)
	}
	if bj.GitURL != "" {
		fmt.Fprintf(t, "GIT\t%s\n", bj.GitURL)
		fmt.Fprintf(t, "REF\t%s\n", orDash(bj.Ref))
		fmt.Fprintf(t, "COMMIT\t%s\n", orDash(bj.Commit))
	}
	if bj.ArchiveSHA256 != "" {
		fmt.Fprintf(t, "SOURCE\tuploaded archive sha256:%s\n", bj.ArchiveSHA256)
	}
	if bj.Event != "" {
		fmt.Fprintf(t, "EVENT\t%s\n", bj.Event)
	}
	fmt.Fprintf(t, "CREATED\t%s\n", orDash(bj.Created))
	fmt.Fprintf(t, "STARTED\t%s\n", orDash(bj.Started))
	fmt.Fprintf(t, "FINISHED\t%s\n", orDash(bj.Finished))
	fmt.Fprintf(t, "DURATION\t%s\n", buildDuration(b))
	if bj.Reason != "" {
		fmt.Fprintf(t, "REASON\t%s\n", bj.Reason)
	}
	if b.GetTests().GetTotal() > 0 {
		fmt.Fprintf(t, "TESTS\t%s\n", summaryLine(b.GetTests()))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w)
	fmt.Fprintln(t, "JOB\tSTATE\tATTEMPT\tAGENT\tEXIT\tREASON")
	for i, j := range bj.Jobs {
		exit := "-"
		switch b.GetJobs()[i].GetState() {
		case kilnv1.JobState_JOB_STATE_PASSED, kilnv1.JobState_JOB_STATE_FAILED:
			if b.GetJobs()[i].GetSpec().GetApproval() == nil { // a gate runs nothing
				exit = fmt.Sprint(j.ExitCode)
			}
		}
		reason := j.Reason
		if j.Waiting != "" {
			// Why it waits now says more than why an earlier attempt ended.
			reason = j.Waiting
		}
		fmt.Fprintf(t, "%s\t%s\t%d\t%s\t%s\t%s\n", j.Key, j.State, j.Attempt, orDash(j.Agent), exit, orDash(reason))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	for _, j := range bj.Jobs {
		if j.Attempt > 1 {
			// Retried jobs keep every attempt's log; say how to reach them.
			fmt.Fprintf(w, "\nEarlier attempts' logs: kilnctl logs %s --job KEY --attempt N (N from 1 to ATTEMPT)\n", bj.ID)
			break
		}
	}
	return nil
}

// sourceCell is a build's source in one table cell: "repo@ref" (or the
// git URL's last element), "upload", or "-".
func sourceCell(b *kilnv1.Build) string {
	src := b.GetSource()
	name := src.GetRepo()
	if name == "" && src.GetGitUrl() != "" {
		u := strings.TrimSuffix(strings.TrimRight(src.GetGitUrl(), "/"), ".git")
		name = u[strings.LastIndexAny(u, "/:")+1:]
	}
	switch {
	case name != "" && src.GetRef() != "":
		return oneLine(name+"@"+src.GetRef(), 40)
	case name != "":
		return oneLine(name, 40)
	case src.GetArchiveSha256() != "":
		return "upload"
	}
	return "-"
}

// shortCommit is the first 10 hex digits of a commit id, or "-".
func shortCommit(c string) string {
	if len(c) > 10 {
		return c[:10]
	}
	return orDash(c)
}

func (a *app) buildsCommand() *cobra.Command {
	var (
		output string
		limit  int32
	)
	cmd := &cobra.Command{
		Use:   "builds",
		Short: "List builds, newest first",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			if limit < 0 || limit > maxBuildsListed {
				return usageErrorf("--limit must be between 0 and %d", maxBuildsListed)
			}
			if limit == 0 {
				limit = defaultBuildsListed
			}
			builds, err := a.listBuilds(cmd.Context(), int(limit))
			if err != nil {
				return err
			}
			if structured(output) {
				out := make([]BuildJSON, 0, len(builds))
				for _, b := range builds {
					out = append(out, toBuildJSON(b))
				}
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "ID\tNAME\tSOURCE\tCOMMIT\tSUBMITTER\tSTATE\tDURATION\tFINISHED")
			for _, b := range builds {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.GetId(), orDash(oneLine(b.GetName(), 40)),
					sourceCell(b), shortCommit(b.GetSource().GetCommit()),
					orDash(b.GetSubmitter()), buildState(b.GetState()), buildDuration(b), orDash(rfc3339(b.GetFinishedUnixMs())))
			}
			return t.Flush()
		}),
	}
	cmd.Flags().Int32Var(&limit, "limit", 0, "at most this many builds, fetched page by page (0: 50)")
	addOutputFlag(cmd, &output)
	return cmd
}

// Limits of `kilnctl builds --limit`.
const (
	defaultBuildsListed = 50
	maxBuildsListed     = 100_000
	// buildsPerPage is the page size asked of ListBuilds (the server's
	// maximum; it may answer fewer to stay under the message limit).
	buildsPerPage = 1000
)

// listBuilds fetches the newest limit builds, following next_page_token.
// Each page is its own request (retried on its own through elections).
func (a *app) listBuilds(ctx context.Context, limit int) ([]*kilnv1.Build, error) {
	var builds []*kilnv1.Build
	token := ""
	for len(builds) < limit {
		var resp *kilnv1.ListBuildsResponse
		err := a.control(ctx, "list builds", "", func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
			r, err := cs.ListBuilds(ctx, &kilnv1.ListBuildsRequest{Limit: int32(min(limit-len(builds), buildsPerPage)),
				PageToken: token, Consistency: a.consistency})
			resp = r
			return err
		})
		if err != nil {
			return nil, err
		}
		builds = append(builds, resp.GetBuilds()...)
		token = resp.GetNextPageToken()
		if token == "" || len(resp.GetBuilds()) == 0 {
			break
		}
	}
	if len(builds) > limit {
		builds = builds[:limit]
	}
	return builds, nil
}

// listAgents fetches every agent, following next_page_token.
func (a *app) listAgents(ctx context.Context) ([]*kilnv1.Agent, error) {
	var agents []*kilnv1.Agent
	token := ""
	for {
		var resp *kilnv1.ListAgentsResponse
		err := a.control(ctx, "list agents", "", func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
			r, err := cs.ListAgents(ctx, &kilnv1.ListAgentsRequest{PageToken: token, Consistency: a.consistency})
			resp = r
			return err
		})
		if err != nil {
			return nil, err
		}
		agents = append(agents, resp.GetAgents()...)
		token = resp.GetNextPageToken()
		if token == "" || len(resp.GetAgents()) == 0 {
			return agents, nil
		}
	}
}

// oneLine shortens s to one line of at most n runes for tables.
func oneLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func (a *app) cancelCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel BUILD",
		Short: "Cancel a build (queued jobs are skipped, running jobs stopped)",
		Args:  exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			id := args[0]
			req := &kilnv1.CancelBuildRequest{RequestId: newRequestID(), BuildId: id, Reason: reason}
			b, err := controlBuild(cmd.Context(), a, nil, "cancel build "+id, buildNotFoundHint, func(ctx context.Context, cs kilnv1.ControlServiceClient) (*kilnv1.CancelBuildResponse, error) {
				return cs.CancelBuild(ctx, req)
			})
			if err != nil {
				return err
			}
			switch s := b.GetState(); s {
			case kilnv1.BuildState_BUILD_STATE_PASSED, kilnv1.BuildState_BUILD_STATE_FAILED:
				return &ExitError{Code: ExitFailed, Err: fmt.Errorf("cancel build %s: the build already %s", id, buildState(s))}
			}
			fmt.Fprintf(a.stdout, "build %s canceled\n", id)
			return nil
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the build is canceled")
	return cmd
}

// AgentJSON is an agent as `kilnctl agents -o json` prints it.
type AgentJSON struct {
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Slots   int32             `json:"slots"`
	Running int32             `json:"running"`
	State   string            `json:"state"`
	Version string            `json:"version"`
}

func (a *app) agentsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List the agents the cluster has seen",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			agents, err := a.listAgents(cmd.Context())
			if err != nil {
				return err
			}
			out := make([]AgentJSON, 0, len(agents))
			for _, ag := range agents {
				labels := ag.GetLabels()
				if labels == nil {
					labels = map[string]string{}
				}
				out = append(out, AgentJSON{Name: ag.GetName(), Labels: labels, Slots: ag.GetSlots(),
					Running: ag.GetRunning(), State: agentState(ag.GetState()), Version: ag.GetVersion()})
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "NAME\tSTATE\tSLOTS\tRUNNING\tVERSION\tLABELS")
			for _, ag := range out {
				var pairs []string
				for _, k := range slices.Sorted(maps.Keys(ag.Labels)) {
					pairs = append(pairs, k+"="+ag.Labels[k])
				}
				fmt.Fprintf(t, "%s\t%s\t%d\t%d\t%s\t%s\n", ag.Name, ag.State, ag.Slots, ag.Running,
					orDash(ag.Version), orDash(strings.Join(pairs, ",")))
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	return cmd
}
