package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kiln-ci/kiln/internal/buildfile"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ClusterJSON is the answer of `kilnctl cluster status -o json`.
type ClusterJSON struct {
	Leader         string     `json:"leader"`
	LeaderGRPCAddr string     `json:"leader_grpc_addr"`
	Nodes          []NodeJSON `json:"nodes"`
}

// NodeJSON is one coordinator of a ClusterJSON.
type NodeJSON struct {
	ID       string `json:"id"`
	GRPCAddr string `json:"grpc_addr"`
	RaftAddr string `json:"raft_addr"`
	State    string `json:"state"`
	Voter    bool   `json:"voter"`
	// Healthy is the leader's autopilot verdict (caught up and in
	// contact); nil when the answering coordinator is not the leader and
	// so does not know.
	Healthy *bool `json:"healthy,omitempty"`
}

func (a *app) clusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect and change the coordinator cluster",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q for %q (see '%s --help')", args[0], cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	var output string
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the leader and the coordinators",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var resp *kilnv1.StatusResponse
			err := a.cluster(cmd.Context(), "cluster status", "", func(ctx context.Context, cs kilnv1.ClusterServiceClient) error {
				r, err := cs.Status(ctx, &kilnv1.StatusRequest{})
				resp = r
				return err
			})
			if err != nil {
				return err
			}
			out := ClusterJSON{Leader: resp.GetLeader(), LeaderGRPCAddr: resp.GetLeaderGrpcAddr(), Nodes: []NodeJSON{}}
			for _, n := range resp.GetNodes() {
				nj := NodeJSON{ID: n.GetId(), GRPCAddr: n.GetGrpcAddr(), RaftAddr: n.GetRaftAddr(), State: n.GetState(), Voter: n.GetVoter()}
				if resp.GetNodeId() != "" && resp.GetNodeId() == resp.GetLeader() {
					healthy := n.GetHealthy()
					nj.Healthy = &healthy
				}
				out.Nodes = append(out.Nodes, nj)
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			leader := "none known"
			if out.Leader != "" {
				leader = out.Leader + " (" + orDash(out.LeaderGRPCAddr) + ")"
			}
			fmt.Fprintf(a.stdout, "leader: %s\n\n", leader)
			t := newTable(a.stdout)
			fmt.Fprintln(t, "ID\tSTATE\tVOTER\tHEALTHY\tGRPC\tRAFT")
			for _, n := range out.Nodes {
				healthy := "-"
				if n.Healthy != nil {
					healthy = fmt.Sprint(*n.Healthy)
				}
				fmt.Fprintf(t, "%s\t%s\t%t\t%s\t%s\t%s\n", n.ID, orDash(n.State), n.Voter, healthy, orDash(n.GRPCAddr), orDash(n.RaftAddr))
			}
			return t.Flush()
		}),
	}
	addOutputFlag(status, &output)
	leave := &cobra.Command{
		Use:   "leave NODE_ID",
		Short: "Remove a coordinator from the cluster",
		Args:  exactArgs(1, "one node id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			err := a.cluster(cmd.Context(), "remove node "+args[0], "list the nodes with 'kilnctl cluster status'", func(ctx context.Context, cs kilnv1.ClusterServiceClient) error {
				_, err := cs.Leave(ctx, &kilnv1.LeaveRequest{NodeId: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "node %s removed from the cluster\n", args[0])
			return nil
		}),
	}
	cmd.AddCommand(status, leave)
	return cmd
}

func (a *app) validateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a pipeline file or CodeBuild buildspec offline",
		Args:  exactArgs(1, "one pipeline file"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			file := args[0]
			data, err := os.ReadFile(file)
			if err != nil {
				return usageErrorf("read pipeline file: %w", err)
			}
			bf, err := a.loadBuildFile(file, data)
			if err != nil {
				return err
			}
			if bf.Pipeline != nil {
				p := bf.Pipeline
				fmt.Fprintf(a.stdout, "%s: ok (%d steps in %d stages)\n", file, p.NumSteps(), len(p.Stages))
				return printStepKeys(a.stdout, bf.Steps())
			}
			// A buildspec is one step; its key is the dialect's name.
			fmt.Fprintf(a.stdout, "%s: ok (%s, %d step)\n", file, bf.Dialect, bf.NumSteps())
			return nil
		}),
	}
}

// printStepKeys lists the steps a build of the file gets, matrices
// expanded (the keys --job, --step and needs: use), with their stage and
// what each waits for. Conditions (if:) are not evaluated: every step is
// listed.
func printStepKeys(w io.Writer, specs []*kilnv1.StepSpec) error {
	t := newTable(w)
	fmt.Fprintln(t, "  STAGE\tSTEP\tNEEDS")
	for _, sp := range specs {
		needs := strings.Join(sp.GetNeeds(), ",")
		if sp.GetApproval() != nil {
			needs += " (approval gate)"
		}
		fmt.Fprintf(t, "  %d\t%s\t%s\n", sp.GetStage(), sp.GetKey(), orDash(strings.TrimSpace(needs)))
	}
	return t.Flush()
}

// loadBuildFile parses a pipeline file or CodeBuild buildspec (the dialect
// is picked by content), printing its warnings to stderr. On an invalid
// file it prints every problem and returns a usage exit.
func (a *app) loadBuildFile(file string, data []byte) (*buildfile.File, error) {
	bf, err := buildfile.Load(file, data)
	if err != nil {
		fmt.Fprintln(a.stderr, err)
		return nil, &ExitError{Code: ExitUsage}
	}
	for _, w := range bf.Warnings {
		fmt.Fprintln(a.stderr, w)
	}
	return bf, nil
}
