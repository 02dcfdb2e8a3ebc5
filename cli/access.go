package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/authn"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxSecretValue bounds a secret read from stdin (the server's limit).
const MaxSecretValue = 64 << 10

// tokenValue is --token, else $KILN_TOKEN, else the context's token file.
func (a *app) tokenValue() (string, error) {
	tok, from := a.token, "--token"
	if tok == "" {
		tok, from = strings.TrimSpace(os.Getenv(authn.EnvToken)), "$"+authn.EnvToken
	}
	if tok == "" {
		var err error
		if tok, err = a.contextToken(); err != nil {
			return "", err
		}
		from = "the context's token file"
	}
	if tok == "" {
		return "", nil
	}
	if err := authn.ValidToken(tok); err != nil {
		return "", usageErrorf("%s: %v", from, err)
	}
	return tok, nil
}

// access runs call against the AccessService (see control).
func (a *app) access(ctx context.Context, what, notFoundHint string, call func(context.Context, kilnv1.AccessServiceClient) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return a.call(ctx, c, what, notFoundHint, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return call(ctx, kilnv1.NewAccessServiceClient(conn))
	})
}

// parseDays is time.ParseDuration that also takes whole days ("30d").
func parseDays(v string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number of days", v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}

// TokenJSON is a token as `kilnctl token list -o json` prints it.
type TokenJSON struct {
	Name      string `json:"name"`
	Role      string `json:"role,omitempty"`
	Kind      string `json:"kind"`
	Created   string `json:"created"`
	Expires   string `json:"expires,omitempty"`
	CreatedBy string `json:"created_by"`
	Revoked   bool   `json:"revoked"`
	Redeemed  bool   `json:"redeemed,omitempty"`
}

func toTokenJSON(t *kilnv1.Token) TokenJSON {
	return TokenJSON{Name: t.GetName(), Role: t.GetRole(), Kind: t.GetKind(), Created: rfc3339(t.GetCreatedUnixMs()),
		Expires: rfc3339(t.GetExpiresUnixMs()), CreatedBy: t.GetCreatedBy(), Revoked: t.GetRevoked(), Redeemed: t.GetRedeemed()}
}

func (a *app) tokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens (clusters started with --acl)",
		Long: "Roles, each allowed what the ones before it are: viewer (reads), developer\n" +
			"(submits, cancels, retries builds), approver (decides approval gates),\n" +
			"operator (repositories, agents, secrets), admin (tokens, cluster membership).\n" +
			"Role agent is for kiln-agent. A token's secret is printed once; the cluster\n" +
			"keeps only its hash.",
	}
	cmd.AddCommand(a.tokenBootstrapCommand(), a.tokenCreateCommand(), a.tokenListCommand(), a.tokenRevokeCommand(), a.tokenWhoamiCommand())
	return cmd
}

func (a *app) tokenBootstrapCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap",
		Short: "Create the first admin token of a fresh cluster (works once) and print it",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			var resp *kilnv1.BootstrapTokenResponse
			err := a.access(cmd.Context(), "bootstrap", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				var err error
				resp, err = ac.BootstrapToken(ctx, &kilnv1.BootstrapTokenRequest{})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, resp.GetSecret())
			fmt.Fprintf(a.stderr, "token %q (role admin) created; it is shown only now: export %s=...\n", resp.GetToken().GetName(), authn.EnvToken)
			return nil
		}),
	}
}

func (a *app) tokenCreateCommand() *cobra.Command {
	var (
		name, roleName, ttl string
		agent               bool
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME (--role ROLE | --agent) [--ttl D]",
		Short: "Create a token and print its secret (once)",
		Example: "  kilnctl token create --name ci-bot --role developer --ttl 90d\n" +
			"  kilnctl token create --name build-hosts --role agent\n" +
			"  kilnctl token create --agent --name linux-pool   # one-time agent join token",
		Args: exactArgs(0, "no arguments (use --name)"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return usageErrorf("--name is required")
			}
			if agent == (roleName != "") {
				return usageErrorf("give exactly one of --role ROLE or --agent")
			}
			var d time.Duration
			if ttl != "" {
				var err error
				if d, err = parseDays(ttl); err != nil || d < 0 {
					return usageErrorf("--ttl %q: want a duration such as 12h or 30d", ttl)
				}
			}
			req := &kilnv1.CreateTokenRequest{Name: name, Role: roleName, TtlMs: d.Milliseconds(), Agent: agent}
			var resp *kilnv1.CreateTokenResponse
			err := a.access(cmd.Context(), "create token", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				var err error
				resp, err = ac.CreateToken(ctx, req)
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, resp.GetSecret())
			t := resp.GetToken()
			if agent {
				fmt.Fprintf(a.stderr, "one-time agent join token for pool %q created; it is shown only now\n", t.GetName())
			} else {
				fmt.Fprintf(a.stderr, "token %q (role %s) created; it is shown only now\n", t.GetName(), t.GetRole())
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "token name (recorded as the submitter and approver of what it does)")
	f.StringVar(&roleName, "role", "", "viewer, developer, approver, operator, admin or agent")
	f.StringVar(&ttl, "ttl", "", "lifetime such as 12h or 30d (default: no expiry)")
	f.BoolVar(&agent, "agent", false, "create a one-time agent join token; --name is the agent pool")
	return cmd
}

func (a *app) tokenListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var toks []*kilnv1.Token
			err := a.access(cmd.Context(), "list tokens", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				resp, err := ac.ListTokens(ctx, &kilnv1.ListTokensRequest{Consistency: a.consistency})
				toks = resp.GetTokens()
				return err
			})
			if err != nil {
				return err
			}
			out := make([]TokenJSON, 0, len(toks))
			for _, t := range toks {
				out = append(out, toTokenJSON(t))
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "NAME\tKIND\tROLE\tSTATE\tCREATED\tEXPIRES\tCREATED BY")
			for _, r := range out {
				st := "active"
				switch {
				case r.Revoked:
					st = "revoked"
				case r.Redeemed:
					st = "redeemed"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Kind, orDash(r.Role), st, r.Created, orDash(r.Expires), r.CreatedBy)
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func (a *app) tokenRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token at once on every coordinator",
		Args:  exactArgs(1, "a token NAME"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			err := a.access(cmd.Context(), "revoke token "+args[0], "see 'kilnctl token list'", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				_, err := ac.RevokeToken(ctx, &kilnv1.RevokeTokenRequest{Name: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "token %s revoked\n", args[0])
			return nil
		}),
	}
}

func (a *app) tokenWhoamiCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Print the name and role of the token in use",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			var resp *kilnv1.WhoAmIResponse
			err := a.access(cmd.Context(), "whoami", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				var err error
				resp, err = ac.WhoAmI(ctx, &kilnv1.WhoAmIRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if !resp.GetAcl() {
				fmt.Fprintln(a.stdout, "anonymous (the cluster runs without --acl)")
				return nil
			}
			fmt.Fprintf(a.stdout, "%s %s\n", resp.GetName(), resp.GetRole())
			return nil
		}),
	}
}

func (a *app) secretCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Set, list and delete secrets that steps receive as environment variables",
		Long: "A step lists `secrets: [NAME]`; its job gets each as an environment variable.\n" +
			"Values are sealed (AES-256-GCM) before they are replicated, never returned by\n" +
			"any call, and masked as *** in job logs. A --repo secret wins over a global one\n" +
			"for builds of that repository.",
	}
	cmd.AddCommand(a.secretSetCommand(), a.secretListCommand(), a.secretDeleteCommand())
	return cmd
}

func (a *app) secretSetCommand() *cobra.Command {
	var repo string
	cmd := &cobra.Command{
		Use:     "set NAME [--repo R]",
		Short:   "Set a secret; the value is read from standard input",
		Example: "  printf %s \"$DB_PASSWORD\" | kilnctl secret set DB_PASSWORD --repo web",
		Args:    exactArgs(1, "a secret NAME"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			value, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), MaxSecretValue+1))
			if err != nil {
				return fmt.Errorf("read the value from stdin: %w", err)
			}
			if len(value) > MaxSecretValue {
				return usageErrorf("the value is longer than %d bytes", MaxSecretValue)
			}
			// One trailing newline is from echo or a heredoc, not the value.
			value = []byte(strings.TrimSuffix(strings.TrimSuffix(string(value), "\n"), "\r"))
			if len(value) == 0 {
				return usageErrorf("the value is empty: pipe it on standard input")
			}
			err = a.access(cmd.Context(), "set secret "+args[0], "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				_, err := ac.SetSecret(ctx, &kilnv1.SetSecretRequest{Name: args[0], Repo: repo, Value: value})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "secret %s set\n", args[0])
			return nil
		}),
	}
	cmd.Flags().StringVar(&repo, "repo", "", "only for builds of this registered repository")
	return cmd
}

func (a *app) secretListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List secret names (never values)",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var list []*kilnv1.Secret
			err := a.access(cmd.Context(), "list secrets", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				resp, err := ac.ListSecrets(ctx, &kilnv1.ListSecretsRequest{Consistency: a.consistency})
				list = resp.GetSecrets()
				return err
			})
			if err != nil {
				return err
			}
			type secretJSON struct {
				Name      string `json:"name"`
				Repo      string `json:"repo,omitempty"`
				Updated   string `json:"updated"`
				UpdatedBy string `json:"updated_by"`
			}
			out := make([]secretJSON, 0, len(list))
			for _, s := range list {
				out = append(out, secretJSON{s.GetName(), s.GetRepo(), rfc3339(s.GetUpdatedUnixMs()), s.GetUpdatedBy()})
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "NAME\tREPO\tUPDATED\tBY")
			for _, s := range out {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", s.Name, orDash(s.Repo), s.Updated, s.UpdatedBy)
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func (a *app) secretDeleteCommand() *cobra.Command {
	var repo string
	cmd := &cobra.Command{
		Use:   "delete NAME [--repo R]",
		Short: "Delete a secret",
		Args:  exactArgs(1, "a secret NAME"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			err := a.access(cmd.Context(), "delete secret "+args[0], "see 'kilnctl secret list'", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				_, err := ac.DeleteSecret(ctx, &kilnv1.DeleteSecretRequest{Name: args[0], Repo: repo})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "secret %s deleted\n", args[0])
			return nil
		}),
	}
	cmd.Flags().StringVar(&repo, "repo", "", "the repository the secret belongs to (default: the global one)")
	return cmd
}

// AuditJSON is an audit record as `kilnctl audit -o json` prints it.
type AuditJSON struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"`
	Who    string `json:"who"`
	Role   string `json:"role"`
	Method string `json:"method"`
	What   string `json:"what"`
	Addr   string `json:"addr"`
	Code   string `json:"code"`
}

func (a *app) auditCommand() *cobra.Command {
	var (
		output, since string
		limit         int
	)
	cmd := &cobra.Command{
		Use:   "audit [--since D] [-o json]",
		Short: "Show the audit log: who did what, when, from where (admin)",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var sinceMs int64
			if since != "" {
				d, err := parseDays(since)
				if err != nil || d < 0 {
					return usageErrorf("--since %q: want a duration such as 1h or 7d", since)
				}
				sinceMs = time.Now().Add(-d).UnixMilli()
			}
			if limit < 0 {
				return usageErrorf("--limit must not be negative")
			}
			var recs []*kilnv1.AuditRecord
			err := a.access(cmd.Context(), "audit", "", func(ctx context.Context, ac kilnv1.AccessServiceClient) error {
				resp, err := ac.ListAudit(ctx, &kilnv1.ListAuditRequest{SinceUnixMs: sinceMs, Limit: int32(limit), Consistency: a.consistency})
				recs = resp.GetRecords()
				return err
			})
			if err != nil {
				return err
			}
			out := make([]AuditJSON, 0, len(recs))
			for _, r := range recs {
				out = append(out, AuditJSON{Seq: r.GetSeq(), Time: rfc3339(r.GetTimeUnixMs()), Who: r.GetWho(), Role: r.GetRole(),
					Method: r.GetMethod(), What: r.GetWhat(), Addr: r.GetPeerAddr(), Code: r.GetCode()})
			}
			if structured(output) {
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "TIME\tWHO\tROLE\tMETHOD\tRESULT\tFROM\tWHAT")
			for _, r := range out {
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time, r.Who, orDash(r.Role), r.Method, r.Code, orDash(r.Addr), r.What)
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	cmd.Flags().StringVar(&since, "since", "", "only records of the last D (e.g. 1h, 7d)")
	cmd.Flags().IntVar(&limit, "limit", 0, "only the newest N records (default: all kept)")
	return cmd
}
