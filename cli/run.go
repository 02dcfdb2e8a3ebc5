package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	"github.com/kiln-ci/kiln/internal/pipeline"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func (a *app) runCommand() *cobra.Command {
	var (
		labels, env []string
		jobTimeout  time.Duration
		name, file  string
		gitURL, ref string
		upload      string
		image       string
		wait        bool
	)
	cmd := &cobra.Command{
		Use:   "run [flags] -- COMMAND... | run -f FILE [flags]",
		Short: "Submit a build: one shell command, or a pipeline file",
		Long: "Submit a build. With COMMAND, a one-job build runs it with the agent's\n" +
			"shell: a single word is taken as a whole shell line ('make test && make lint');\n" +
			"several words are an argument list, quoted for the shell (-- sh -c 'echo hi').\n" +
			"With -f FILE, the pipeline file (or CodeBuild buildspec.yml) is checked\n" +
			"locally and then submitted. Without --wait the build id is printed;\n" +
			"with --wait the log is streamed and the exit status is 0 only if the\n" +
			"build passed.",
		Example: "  kilnctl run --label os=linux -- make test\n" +
			"  kilnctl run -f buildspec.yml --image golang:1.23 --wait   # CodeBuild, in a container\n" +
			"  kilnctl run --upload . -- make test\n" +
			"  kilnctl run -f .kiln.yaml --wait",
		RunE: action(func(cmd *cobra.Command, args []string) error {
			req := &kilnv1.SubmitBuildRequest{
				RequestId: newRequestID(),
				Submitter: submitter(),
				Name:      name,
			}
			var err error
			if req.Env, err = parsePairs("--env", env); err != nil {
				return err
			}
			if image != "" {
				if err := pipeline.CheckImage(image); err != nil {
					return usageErrorf("--image: %v", err)
				}
				req.Image = image
			}
			if ref != "" && gitURL == "" {
				return usageErrorf("--ref needs --git URL")
			}
			if gitURL != "" && upload != "" {
				return usageErrorf("give either --git URL or --upload DIR, not both")
			}
			if gitURL != "" {
				// The coordinator pins REF (default: the remote's HEAD) to a commit.
				req.Source = &kilnv1.Source{GitUrl: gitURL, Ref: ref}
			}
			if upload != "" {
				if fi, err := os.Stat(upload); err != nil || !fi.IsDir() {
					return usageErrorf("--upload %s: not a directory", upload)
				}
			}
			jobs := 1
			switch {
			case file != "" && len(args) > 0:
				return usageErrorf("give either -f FILE or a COMMAND, not both")
			case file != "":
				if len(labels) > 0 || jobTimeout != 0 {
					return usageErrorf("--label and --job-timeout apply to a single COMMAND; set agents: and timeout: in the pipeline file")
				}
				data, err := os.ReadFile(file)
				if err != nil {
					return usageErrorf("read pipeline file: %w", err)
				}
				bf, err := a.loadBuildFile(file, data)
				if err != nil {
					return err
				}
				jobs = bf.NumSteps()
				req.SpecYaml, req.SpecFilename = string(data), file
			case len(args) > 0:
				if req.Labels, err = parsePairs("--label", labels); err != nil {
					return err
				}
				if jobTimeout < 0 {
					return usageErrorf("--job-timeout must not be negative")
				}
				req.Command = shellLine(args)
				req.TimeoutMs = jobTimeout.Milliseconds()
			default:
				return usageErrorf("nothing to run: give -f FILE or -- COMMAND (see 'kilnctl run --help')")
			}

			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if upload != "" {
				if req.Source, err = a.uploadDir(ctx, c, upload); err != nil {
					return err
				}
			}
			// req (and its request_id) is the same on every retry, so a
			// retry after a failover never creates a second build.
			build, err := controlBuild(ctx, a, c, "submit build", "", func(ctx context.Context, cs kilnv1.ControlServiceClient) (*kilnv1.SubmitBuildResponse, error) {
				return cs.SubmitBuild(ctx, req)
			})
			if err != nil {
				return err
			}
			if !wait {
				fmt.Fprintln(a.stdout, build.GetId())
				return nil
			}
			fmt.Fprintf(a.stderr, "build %s submitted\n", build.GetId())
			if n := len(build.GetJobs()); n > 0 {
				jobs = n
			}
			return a.waitForBuild(ctx, c, build.GetId(), jobs)
		}),
	}
	f := cmd.Flags()
	// Flags end at the first COMMAND word: `kilnctl run ls -la` runs ls -la.
	f.SetInterspersed(false)
	f.StringArrayVar(&labels, "label", nil, "agent label the job needs, `k=v` (repeatable)")
	f.StringArrayVar(&env, "env", nil, "environment variable of the build, `K=V` (repeatable)")
	f.DurationVar(&jobTimeout, "job-timeout", 0, "timeout of the job (default: the cluster's)")
	f.StringVar(&name, "name", "", "build name (default: the pipeline's name or the command)")
	f.StringVarP(&file, "file", "f", "", "pipeline file to submit")
	f.StringVar(&gitURL, "git", "", "git repository checked out into the job workspace (file://, https://, git://, ssh:// or user@host:path)")
	f.StringVar(&ref, "ref", "", "branch, tag or full commit id of --git (default: the remote's default branch)")
	f.StringVar(&upload, "upload", "", "upload `DIR` (honouring .gitignore and .kilnignore) as the build's source, unpacked into the job workspace")
	f.StringVar(&image, "image", "", "run every command step that names no image in a container of `IMAGE` (on agents with docker=true)")
	f.BoolVar(&wait, "wait", false, "stream the log and wait for the build; exit 0 only if it passed")
	return cmd
}

// waitForBuild follows the build's log, waits until the build is finished
// and reports its state: exit 0 only when it passed.
func (a *app) waitForBuild(ctx context.Context, c *client.Client, id string, jobs int) error {
	p := newLogPrinter(a.stdout, a.stderr, jobs > 1)
	if err := a.streamLogs(ctx, c, id, "", true, p); err != nil {
		if ctx.Err() != nil {
			return rpcError("follow build "+id, err, "")
		}
		// The log is a convenience; the outcome still counts.
		fmt.Fprintf(a.stderr, "kilnctl: %v\n", rpcError("follow log of build "+id, err, ""))
	}
	b, err := a.waitTerminal(ctx, c, id)
	if err != nil {
		return rpcError("wait for build "+id, err, "")
	}
	state := buildState(b.GetState())
	fmt.Fprintf(a.stderr, "build %s %s\n", id, state)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		return &ExitError{Code: ExitFailed}
	}
	return nil
}

// waitTerminal follows the build with ControlService.WatchBuild until it
// is passed, failed or canceled. A stream that breaks (leader change,
// coordinator restart) is reopened through the client, on another
// coordinator if need be; each stream starts with the build's current
// state, so nothing is missed.
func (a *app) waitTerminal(ctx context.Context, c *client.Client, id string) (*kilnv1.Build, error) {
	var b *kilnv1.Build
	err := a.followStream(ctx, c, func(ctx context.Context, conn grpc.ClientConnInterface) (func() error, error) {
		stream, err := kilnv1.NewControlServiceClient(conn).WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id, Consistency: a.consistency})
		if err != nil {
			return nil, err
		}
		return func() error {
			m, err := stream.Recv()
			switch {
			case errors.Is(err, io.EOF) && !lifecycle.BuildFinished(b.GetState()):
				return status.Error(codes.Unavailable, "the build's watch ended before the build finished")
			case err != nil:
				return err
			}
			b = m.GetBuild()
			if lifecycle.BuildFinished(b.GetState()) {
				return io.EOF
			}
			return nil
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// parsePairs parses repeated k=v flag values.
func parsePairs(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(vals))
	for _, v := range vals {
		k, val, ok := strings.Cut(v, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, usageErrorf("%s %q: want key=value", flag, v)
		}
		out[k] = val
	}
	return out, nil
}

// newRequestID returns a random 128-bit hex id for a mutating request.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// submitter returns $USER@hostname.
func submitter() string {
	name := os.Getenv("USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		} else {
			name = "unknown"
		}
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return name + "@" + host
}

// shellLine turns the COMMAND words into the shell line the agent runs. One
// word is already a shell line. Several words are an argument list: each is
// quoted so the agent's shell sees exactly these arguments.
func shellLine(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = shellQuote(w)
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes w for a POSIX shell unless it is made only of
// characters the shell treats literally.
func shellQuote(w string) string {
	if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}
