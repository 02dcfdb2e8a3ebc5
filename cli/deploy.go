package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// DeploymentJSON is one deployment of `kilnctl deployments ENV -o json`.
type DeploymentJSON struct {
	ID          string `json:"id"`
	Environment string `json:"environment"`
	Build       string `json:"build"`
	Step        string `json:"step"`
	Version     string `json:"version"`
	Strategy    string `json:"strategy"`
	Color       string `json:"color,omitempty"`
	StartedBy   string `json:"started_by"`
	ApprovedBy  string `json:"approved_by,omitempty"`
	Started     string `json:"started"`
	Finished    string `json:"finished,omitempty"`
	Phase       string `json:"phase"`
	// Outcome is "running" until the deployment ends, then succeeded,
	// failed or rolled_back.
	Outcome string     `json:"outcome"`
	Reason  string     `json:"reason,omitempty"`
	Hosts   []HostJSON `json:"hosts"`
}

// HostJSON is one target host of a DeploymentJSON.
type HostJSON struct {
	Agent   string `json:"agent"`
	Batch   int32  `json:"batch"`
	Phase   string `json:"phase"`
	Job     string `json:"job,omitempty"`
	Result  string `json:"result,omitempty"`
	Order   int32  `json:"order,omitempty"`
	Updated string `json:"updated,omitempty"`
}

func deploymentJSON(d *kilnv1.Deployment) DeploymentJSON {
	out := DeploymentJSON{ID: d.GetId(), Environment: d.GetEnvironment(), Build: d.GetBuildId(), Step: d.GetStep(),
		Version: d.GetVersion(), Strategy: d.GetStrategy(), Color: d.GetColor(), StartedBy: d.GetStartedBy(),
		ApprovedBy: d.GetApprovedBy(), Started: rfc3339(d.GetStartedUnixMs()), Finished: rfc3339(d.GetFinishedUnixMs()),
		Phase: d.GetPhase(), Outcome: d.GetOutcome(), Reason: d.GetReason(), Hosts: []HostJSON{}}
	if out.Outcome == "" {
		out.Outcome = "running"
	}
	for _, h := range d.GetHosts() {
		out.Hosts = append(out.Hosts, HostJSON{Agent: h.GetAgent(), Batch: h.GetBatch(), Phase: h.GetPhase(), Job: h.GetJobId(),
			Result: h.GetResult(), Order: h.GetOrder(), Updated: rfc3339(h.GetUpdatedUnixMs())})
	}
	return out
}

func (a *app) deployClient(ctx context.Context, what, notFoundHint string, call func(context.Context, kilnv1.DeployServiceClient) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return a.call(ctx, c, what, notFoundHint, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return call(ctx, kilnv1.NewDeployServiceClient(conn))
	})
}

func (a *app) deploymentsCommand() *cobra.Command {
	var output string
	var limit int32
	cmd := &cobra.Command{
		Use:   "deployments ENV",
		Short: "List the deployments of an environment, newest first, with each host's result",
		Args:  exactArgs(1, "an environment name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var list []*kilnv1.Deployment
			err := a.deployClient(cmd.Context(), "list deployments", "", func(ctx context.Context, ds kilnv1.DeployServiceClient) error {
				resp, err := ds.ListDeployments(ctx, &kilnv1.ListDeploymentsRequest{Environment: args[0], Limit: limit, Consistency: a.consistency})
				list = resp.GetDeployments()
				return err
			})
			if err != nil {
				return err
			}
			out := make([]DeploymentJSON, 0, len(list))
			for _, d := range list {
				out = append(out, deploymentJSON(d))
			}
			if output == "json" {
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "ID\tVERSION\tSTRATEGY\tOUTCOME\tSTARTED\tBY\tHOSTS")
			for _, d := range out {
				hosts := ""
				for i, h := range d.Hosts {
					if i > 0 {
						hosts += " "
					}
					hosts += h.Agent + ":" + h.Phase
				}
				by := d.StartedBy
				if d.ApprovedBy != "" {
					by += " (approved by " + d.ApprovedBy + ")"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Version, d.Strategy, d.Outcome, d.Started, orDash(by), orDash(hosts))
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	cmd.Flags().Int32Var(&limit, "limit", 20, "show at most this many (1..1000)")
	return cmd
}

func (a *app) rollbackCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback ENV",
		Short: "Redeploy the environment's last succeeded version (as a new build)",
		Long: "rollback submits a build that runs the deploy step of the environment's last\n" +
			"succeeded deployment again, at that deployment's version: the newest succeeded\n" +
			"deployment of a version other than the live one, or, when the newest deployment\n" +
			"did not succeed, the newest succeeded one. It prints the new build's id.",
		Args: exactArgs(1, "an environment name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			req := &kilnv1.RollbackRequest{Environment: args[0], RequestId: newRequestID(), By: submitter()}
			var resp *kilnv1.RollbackResponse
			err := a.deployClient(cmd.Context(), "rollback", "", func(ctx context.Context, ds kilnv1.DeployServiceClient) error {
				r, err := ds.Rollback(ctx, req)
				resp = r
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "redeploying %s to %s (deployment %s)\n", args[0], resp.GetTarget().GetVersion(), resp.GetTarget().GetId())
			fmt.Fprintln(a.stdout, resp.GetBuild().GetId())
			return nil
		}),
	}
}
