// Package cli implements kilnctl, the Kiln command-line client, as a
// library: NewRootCommand builds the cobra command tree and ExitCode maps
// the error it returns to the process exit status (0 ok, 1 the build did
// not pass or the operation failed, 2 usage or invalid input).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/discovery"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Exit codes of kilnctl.
const (
	ExitOK     = 0
	ExitFailed = 1 // the build did not pass, or the operation failed
	ExitUsage  = 2 // bad usage or invalid input
)

// EnvCoordinators names the environment variable holding the default
// coordinator addresses (comma-separated).
const EnvCoordinators = "KILN_COORDINATORS"

// DefaultCoordinator is the coordinator address used when neither
// --coordinators nor KILN_COORDINATORS is set.
const DefaultCoordinator = "127.0.0.1:7070"

const unavailableHint = "is the cluster running? set --coordinators or " + EnvCoordinators

// ExitError carries a command's exit code. A nil Err means the command has
// already told the user everything (nothing more is printed).
type ExitError struct {
	Code int
	Err  error
}

// Error returns the underlying message.
func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode maps an error returned by the root command to an exit status:
// 0 for nil, the code of an *ExitError, else 2 (cobra's own errors are
// usage errors: unknown command or flag, wrong arguments).
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitUsage
}

// Main runs kilnctl with args (without the program name) and returns the
// exit status. SIGINT and SIGTERM cancel the running command.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(args)
	return ExitCode(root.ExecuteContext(ctx))
}

// app holds the global flags and the output streams.
type app struct {
	stdout, stderr io.Writer
	coordinators   []string
	etcdEndpoints  string // --etcd-endpoints, for etcd:/// coordinators
	timeout        time.Duration
	verbose        bool
	// consistency is what reads ask for (--consistency).
	consistency kilnv1.Consistency
	// tls holds --tls-ca, --tls-cert and --tls-key (see tls.go).
	tls tlsutil.Files
	// token is --token (else $KILN_TOKEN is used).
	token string
}

// NewRootCommand returns the kilnctl command tree writing to stdout and
// stderr. Errors are printed to stderr as "kilnctl: ..."; pass the error
// returned by Execute to ExitCode for the exit status.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "kilnctl",
		Short: "kilnctl drives a Kiln build farm",
		Long: "kilnctl submits builds to a Kiln cluster, follows their logs, and inspects\n" +
			"builds, agents and coordinators.",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetErrPrefix("kilnctl:")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringSliceVar(&a.coordinators, "coordinators", nil,
		"coordinator gRPC addresses, comma-separated (default $"+EnvCoordinators+", else "+DefaultCoordinator+")")
	pf.StringVar(&a.etcdEndpoints, "etcd-endpoints", "",
		"etcd client URLs, comma-separated, resolving --coordinators etcd:///PREFIX (default $"+discovery.EnvEndpoints+")")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "timeout of each request to the cluster")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "log client activity (retries, redirects) to stderr")
	pf.StringVar(&a.token, "token", "", "API token for clusters started with --acl (default $"+authn.EnvToken+"; prefer the variable: flags show in ps)")
	pf.Func("consistency", "how fresh reads must be: linearizable (default: reflects every acknowledged write, whichever coordinator answers) or stale (the answering coordinator's local state, no round trip to the leader)", func(v string) error {
		c, err := parseConsistency(v)
		if err != nil {
			return err
		}
		a.consistency = c
		return nil
	})
	a.addTLSFlags(root)

	root.AddCommand(
		a.tlsCommand(),
		a.runCommand(),
		a.statusCommand(),
		a.logsCommand(),
		a.buildsCommand(),
		a.cancelCommand(),
		a.approvalCommand(true), a.approvalCommand(false), a.retryCommand(),
		a.agentsCommand(),
		a.clusterCommand(),
		a.validateCommand(),
		a.repoCommand(),
		a.artifactsCommand(),
		a.testsCommand(),
		a.tokenCommand(), a.secretCommand(), a.auditCommand(),
		a.queueCommand(), a.statsCommand(),
		a.deploymentsCommand(), a.rollbackCommand(),
	)
	return root
}

// action wraps a command body: errors that are not *ExitError become
// failures (exit 1), and a silent *ExitError suppresses cobra's message.
func action(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var ee *ExitError
		if !errors.As(err, &ee) {
			return &ExitError{Code: ExitFailed, Err: err}
		}
		if ee.Err == nil {
			cmd.SilenceErrors = true
		}
		return err
	}
}

// parseConsistency maps the --consistency values to the wire enum.
func parseConsistency(v string) (kilnv1.Consistency, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "linearizable", "":
		return kilnv1.Consistency_CONSISTENCY_LINEARIZABLE, nil
	case "stale":
		return kilnv1.Consistency_CONSISTENCY_STALE, nil
	}
	return 0, fmt.Errorf("%q is neither linearizable nor stale", v)
}

// usageErrorf returns an exit-2 error.
func usageErrorf(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// exactArgs is cobra.ExactArgs with a usage exit code and a clearer message.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s takes %s (see '%s --help')", cmd.CommandPath(), names, cmd.CommandPath())
		}
		return nil
	}
}

// addrs returns the coordinator addresses: --coordinators, else
// $KILN_COORDINATORS, else the default.
func (a *app) addrs() []string {
	list := a.coordinators
	if len(list) == 0 {
		if env := os.Getenv(EnvCoordinators); strings.TrimSpace(env) != "" {
			list = strings.Split(env, ",")
		}
	}
	var out []string
	for _, s := range list {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		out = []string{DefaultCoordinator}
	}
	return out
}

func (a *app) logger() *zap.Logger {
	if !a.verbose {
		return zap.NewNop()
	}
	enc := zap.NewDevelopmentEncoderConfig()
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(a.stderr), zapcore.DebugLevel)
	return zap.New(core)
}

// client returns a cluster client; the caller closes it.
func (a *app) client() (*client.Client, error) {
	addrs := a.addrs()
	opts, err := a.clientOptions()
	if err != nil {
		return nil, err
	}
	tok, err := a.tokenValue()
	if err != nil {
		return nil, err
	}
	opts = append(opts, client.WithToken(tok))
	if slices.ContainsFunc(addrs, discovery.IsTarget) {
		eps := a.etcdEndpoints
		if strings.TrimSpace(eps) == "" {
			eps = os.Getenv(discovery.EnvEndpoints)
		}
		list, err := discovery.ParseEndpoints(eps)
		if err != nil {
			return nil, usageErrorf("--coordinators etcd:///...: %w (set --etcd-endpoints or $%s)", err, discovery.EnvEndpoints)
		}
		opts = append(opts, client.WithEtcd(list))
	}
	c, err := client.New(addrs, a.logger(), opts...)
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	return c, nil
}

// unary runs one request through c.Do with the --timeout deadline.
func (a *app) unary(ctx context.Context, c *client.Client, fn func(ctx context.Context, conn grpc.ClientConnInterface) error) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return c.Do(ctx, fn)
}

// control opens a cluster client, runs call against the ControlService
// through a.unary (so with the --timeout deadline and client.Do's retries
// and leader following), closes the client and maps a failure with
// rpcError(what, err, notFoundHint). call may run more than once: build
// any request carrying a request id outside it, so every retry reuses it.
func (a *app) control(ctx context.Context, what, notFoundHint string, call func(context.Context, kilnv1.ControlServiceClient) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return a.controlOn(ctx, c, what, notFoundHint, call)
}

// controlOn is control on the open client c, which the caller keeps.
func (a *app) controlOn(ctx context.Context, c *client.Client, what, notFoundHint string, call func(context.Context, kilnv1.ControlServiceClient) error) error {
	return a.call(ctx, c, what, notFoundHint, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return call(ctx, kilnv1.NewControlServiceClient(conn))
	})
}

// cluster is control for the ClusterService.
func (a *app) cluster(ctx context.Context, what, notFoundHint string, call func(context.Context, kilnv1.ClusterServiceClient) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return a.call(ctx, c, what, notFoundHint, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return call(ctx, kilnv1.NewClusterServiceClient(conn))
	})
}

// call runs fn on c through a.unary and maps a failure with rpcError.
func (a *app) call(ctx context.Context, c *client.Client, what, notFoundHint string, fn func(context.Context, grpc.ClientConnInterface) error) error {
	if err := a.unary(ctx, c, fn); err != nil {
		return rpcError(what, err, notFoundHint)
	}
	return nil
}

// rpcError turns a failed call into the error kilnctl prints:
// "<what>: <status message> (hint: ...)". notFoundHint is shown for
// codes.NotFound. Invalid arguments exit 2, everything else 1.
func rpcError(what string, err error, notFoundHint string) error {
	var ee *ExitError
	if errors.As(err, &ee) {
		return err
	}
	code := ExitFailed
	msg := err.Error()
	var hint string
	if st, ok := statusOf(err); ok {
		msg = st.Message()
		switch st.Code() {
		case codes.NotFound:
			hint = notFoundHint
		case codes.InvalidArgument:
			code = ExitUsage
			hint = "fix the request; 'kilnctl validate FILE' checks a pipeline file offline"
		case codes.PermissionDenied:
			hint = "ask someone who is allowed, or check the approvers in the pipeline file"
		case codes.Unauthenticated:
			hint = "give --token or set $" + authn.EnvToken + " ('kilnctl token bootstrap' prints a fresh cluster's first admin token)"
		case codes.Unavailable:
			hint = unavailableHint
		case codes.DeadlineExceeded:
			hint = "no answer within --timeout; is the cluster overloaded or partitioned?"
		case codes.Canceled:
			msg = "interrupted"
		}
	} else if errors.Is(err, context.Canceled) {
		msg = "interrupted"
	} else if errors.Is(err, context.DeadlineExceeded) {
		msg = "timed out"
		hint = "no answer within --timeout"
	}
	text := what + ": " + msg
	if hint != "" {
		if strings.Contains(msg, "\n") {
			text += "\nhint: " + hint
		} else {
			text += " (hint: " + hint + ")"
		}
	}
	return &ExitError{Code: code, Err: errors.New(text)}
}

// statusOf finds the gRPC status in err's chain, keeping its own message
// (status.FromError would replace it with the whole chain's text).
func statusOf(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus(), true
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st, true
	}
	return nil, false
}

// outputFormat validates the -o flag.
func outputFormat(o string) error {
	switch o {
	case "table", "json":
		return nil
	}
	return usageErrorf("unknown output format %q: use table or json", o)
}

func addOutputFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "output", "o", "table", "output format: table or json")
}
