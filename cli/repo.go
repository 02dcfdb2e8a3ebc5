package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// RepoJSON is a repository as `kilnctl repo list -o json` prints it.
type RepoJSON struct {
	Name       string `json:"name"`
	URL        string `json:"url"`
	Branch     string `json:"branch"`
	Pipeline   string `json:"pipeline"`
	Poll       string `json:"poll"`
	PollMs     int64  `json:"poll_ms"`
	LastCommit string `json:"last_commit"`
	Builds     uint64 `json:"builds"`
	// LastError is why the newest watched commit could not be built (its
	// pipeline file missing or invalid), with that commit and the failed
	// build recording it; empty once a later commit builds.
	LastError        string `json:"last_error"`
	LastErrorCommit  string `json:"last_error_commit"`
	LastErrorBuildID string `json:"last_error_build_id"`
}

func toRepoJSON(r *kilnv1.Repo) RepoJSON {
	return RepoJSON{
		Name:       r.GetName(),
		URL:        r.GetUrl(),
		Branch:     r.GetBranch(),
		Pipeline:   r.GetPipeline(),
		Poll:       (time.Duration(r.GetPollIntervalMs()) * time.Millisecond).String(),
		PollMs:     r.GetPollIntervalMs(),
		LastCommit: r.GetLastCommit(),
		Builds:     r.GetBuilds(),

		LastError:        r.GetLastError(),
		LastErrorCommit:  r.GetLastErrorCommit(),
		LastErrorBuildID: r.GetLastErrorBuildId(),
	}
}

func (a *app) repoCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Register, list and remove repositories whose branch the cluster watches",
		Long: "A registered repository's branch is polled by the leader; each new branch\n" +
			"tip it sees starts one build of the repository's pipeline file at that\n" +
			"commit (event \"push\"). Several commits pushed between two polls start one\n" +
			"build, of the tip; a tip is never built twice, even across leader changes.\n" +
			"A tip whose pipeline file is missing or invalid becomes a failed build with\n" +
			"the problems as its reason, and 'repo list' shows it as the LAST ERROR.",
	}
	cmd.AddCommand(a.repoAddCommand(), a.repoListCommand(), a.repoRemoveCommand())
	return cmd
}

func (a *app) repoRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Stop watching a repository (its builds stay)",
		Long: "remove unregisters a repository: its branch is no longer polled. Its builds\n" +
			"stay. Registering the name again starts its build counter\n" +
			"(KILN_BUILD_NUMBER) from 1.",
		Args: exactArgs(1, "a repository name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			var repo *kilnv1.Repo
			err := a.control(cmd.Context(), "remove repository "+args[0], "'kilnctl repo list' lists the registered repositories",
				func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
					resp, err := cs.RemoveRepo(ctx, &kilnv1.RemoveRepoRequest{Name: args[0]})
					if err != nil {
						return err
					}
					repo = resp.GetRepo()
					return nil
				})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "repository %s removed (%d builds kept)\n", args[0], repo.GetBuilds())
			return nil
		}),
	}
}

func (a *app) repoAddCommand() *cobra.Command {
	var (
		branch, pipelineFile string
		poll                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "add NAME URL",
		Short: "Register a repository (or update its settings) and watch a branch",
		Example: "  kilnctl repo add web https://git.example.com/web.git --branch main --poll 30s\n" +
			"  kilnctl repo add tools git@git.example.com:tools.git --pipeline ci/kiln.yaml",
		Args: exactArgs(2, "NAME and URL"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if poll < 0 {
				return usageErrorf("--poll must not be negative")
			}
			if poll > 0 && poll < time.Second {
				return usageErrorf("--poll %s is below the 1s minimum", poll)
			}
			req := &kilnv1.AddRepoRequest{Name: args[0], Url: args[1], Branch: branch, Pipeline: pipelineFile,
				PollIntervalMs: poll.Milliseconds()}
			var repo *kilnv1.Repo
			err := a.control(cmd.Context(), "add repository", "", func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
				resp, err := cs.AddRepo(ctx, req)
				if err != nil {
					return err
				}
				repo = resp.GetRepo()
				return nil
			})
			if err != nil {
				return err
			}
			r := toRepoJSON(repo)
			fmt.Fprintf(a.stdout, "repository %s watches %s of %s every %s (pipeline %s)\n", r.Name, r.Branch, r.URL, r.Poll, r.Pipeline)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&branch, "branch", "main", "branch to watch")
	f.StringVar(&pipelineFile, "pipeline", ".kiln.yaml", "path of the pipeline file in the repository")
	f.DurationVar(&poll, "poll", 30*time.Second, "poll interval (at least 1s)")
	return cmd
}

func (a *app) repoListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the registered repositories",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var repos []*kilnv1.Repo
			for token := ""; ; {
				var resp *kilnv1.ListReposResponse
				err := a.control(cmd.Context(), "list repositories", "", func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
					r, err := cs.ListRepos(ctx, &kilnv1.ListReposRequest{PageToken: token, Consistency: a.consistency})
					resp = r
					return err
				})
				if err != nil {
					return err
				}
				repos = append(repos, resp.GetRepos()...)
				if token = resp.GetNextPageToken(); token == "" || len(resp.GetRepos()) == 0 {
					break
				}
			}
			out := make([]RepoJSON, 0, len(repos))
			for _, r := range repos {
				out = append(out, toRepoJSON(r))
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "NAME\tBRANCH\tPOLL\tBUILDS\tLAST COMMIT\tPIPELINE\tURL\tLAST ERROR")
			for _, r := range out {
				last := r.LastCommit
				if len(last) > 12 {
					last = last[:12]
				}
				lastErr := "-"
				if r.LastError != "" {
					lastErr = fmt.Sprintf("build %s: %s", r.LastErrorBuildID, oneLine(strings.TrimPrefix(r.LastError, "invalid build file:\n"), 80))
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Name, r.Branch, r.Poll, r.Builds, orDash(last), r.Pipeline, r.URL, lastErr)
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	return cmd
}
