package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// approvalCommand is `kilnctl approve` (approve true) or `kilnctl reject`.
func (a *app) approvalCommand(approve bool) *cobra.Command {
	var comment string
	verb, done, short := "approve", "approved", "Approve a blocked approval step so the build goes on"
	if !approve {
		verb, done, short = "reject", "rejected", "Reject a blocked approval step (the step fails)"
	}
	cmd := &cobra.Command{
		Use:   verb + " BUILD STEP",
		Short: short,
		Args:  exactArgs(2, "a build id and the key of an approval step"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			id, step := args[0], args[1]
			// One request id for every retry of this decision.
			req := &kilnv1.DecideApprovalRequest{RequestId: newRequestID(), BuildId: id, Step: step,
				Approve: approve, By: submitter(), Comment: comment}
			err := a.control(cmd.Context(), verb+" "+id+" "+step, buildNotFoundHint+"; 'kilnctl status "+id+"' shows its steps",
				func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
					_, err := cs.DecideApproval(ctx, req)
					return err
				})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "build %s: step %s %s\n", id, step, done)
			return nil
		}),
	}
	cmd.Flags().StringVar(&comment, "comment", "", "a note recorded with the decision")
	return cmd
}

func (a *app) retryCommand() *cobra.Command {
	var step string
	cmd := &cobra.Command{
		Use:   "retry BUILD",
		Short: "Run the failed steps of a finished build again",
		Long: "retry runs the failed, timed out, lost or canceled steps of a finished build\n" +
			"again, and the steps skipped because of them. --step retries one step only.",
		Args: exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			id := args[0]
			req := &kilnv1.RetryBuildRequest{RequestId: newRequestID(), BuildId: id, Step: step}
			hint := buildNotFoundHint
			if step != "" {
				hint = "'kilnctl status " + id + "' lists the build's steps; " + buildNotFoundHint
			}
			b, err := controlBuild(cmd.Context(), a, nil, "retry build "+id, hint, func(ctx context.Context, cs kilnv1.ControlServiceClient) (*kilnv1.RetryBuildResponse, error) {
				return cs.RetryBuild(ctx, req)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "build %s retried (%s)\n", id, buildState(b.GetState()))
			return nil
		}),
	}
	cmd.Flags().StringVar(&step, "step", "", "retry only this step (its key)")
	return cmd
}
