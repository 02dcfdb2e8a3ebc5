package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// EnvConfig names the environment variable holding the path of kilnctl's
// config file (default: the user config directory's kiln/config.yaml).
const EnvConfig = "KILN_CONFIG"

// maxConfigBytes bounds the config file kilnctl reads.
const maxConfigBytes = 1 << 20

// contextName is what a context may be called.
var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Config is kilnctl's config file: named contexts, each a cluster and how
// to reach it, and the one in use. Like kubectl's contexts, they spare
// exporting KILN_COORDINATORS and friends in every shell.
type Config struct {
	// CurrentContext is used when --context is not given.
	CurrentContext string `yaml:"current-context,omitempty"`
	// Contexts by name.
	Contexts map[string]*ClusterContext `yaml:"contexts,omitempty"`
}

// ClusterContext is one context: where the cluster is and the
// credentials to use. Paths are absolute. The token is read from
// TokenFile at each use and never stored here.
type ClusterContext struct {
	Coordinators []string `yaml:"coordinators,omitempty"`
	TokenFile    string   `yaml:"token-file,omitempty"`
	TLSCA        string   `yaml:"tls-ca,omitempty"`
	TLSCert      string   `yaml:"tls-cert,omitempty"`
	TLSKey       string   `yaml:"tls-key,omitempty"`
}

// configPath is $KILN_CONFIG, else <user config dir>/kiln/config.yaml.
func configPath() (string, error) {
	if p := strings.TrimSpace(os.Getenv(EnvConfig)); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory (set $%s): %w", EnvConfig, err)
	}
	return filepath.Join(dir, "kiln", "config.yaml"), nil
}

// loadConfig reads the config file; a missing file is an empty config.
func loadConfig() (*Config, string, error) {
	path, err := configPath()
	if err != nil {
		return nil, "", err
	}
	cfg := &Config{Contexts: map[string]*ClusterContext{}}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, path, nil
	}
	if err != nil {
		return nil, path, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, path, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, path, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigBytes)
	}
	if err := yaml.Unmarshal(data, cfg); err != nil {
		return nil, path, fmt.Errorf("config %s: %w (fix or remove the file)", path, err)
	}
	if cfg.Contexts == nil {
		cfg.Contexts = map[string]*ClusterContext{}
	}
	return cfg, path, nil
}

// save writes cfg to path with mode 0600 (its directory 0700), through a
// temporary file and a rename so a crash leaves the old file or the new.
func (cfg *Config) save(path string) error {
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// activeContext returns the context in use (--context, else the config's
// current-context), or nil when there is none. It reads the config file
// once per command.
func (a *app) activeContext() (*ClusterContext, error) {
	if a.ctxLoaded {
		return a.ctxActive, a.ctxErr
	}
	a.ctxLoaded = true
	name := a.contextFlag
	if _, err := configPath(); err != nil && name == "" {
		return nil, nil // no place for a config file: nothing configured
	}
	cfg, path, err := loadConfig()
	if err != nil {
		if name == "" {
			// A broken config must not block commands that do not use it;
			// flags and variables still work. Say so once.
			fmt.Fprintf(a.stderr, "kilnctl: warning: %v\n", err)
			return nil, nil
		}
		a.ctxErr = usageErrorf("--context %s: %w", name, err)
		return nil, a.ctxErr
	}
	if name == "" {
		name = cfg.CurrentContext
		if name == "" {
			return nil, nil
		}
	}
	c, ok := cfg.Contexts[name]
	if !ok {
		a.ctxErr = usageErrorf("context %q is not in %s (hint: 'kilnctl config get-contexts' lists them)", name, path)
		return nil, a.ctxErr
	}
	a.ctxActive = c
	return c, nil
}

// contextToken reads the active context's token file, if it names one.
func (a *app) contextToken() (string, error) {
	c, err := a.activeContext()
	if err != nil || c == nil || c.TokenFile == "" {
		return "", err
	}
	data, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", usageErrorf("token file of the context: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// contextTLS fills the TLS files the flags and variables left unset from
// the active context.
func (a *app) contextTLS(f tlsutil.Files) (tlsutil.Files, error) {
	c, err := a.activeContext()
	if err != nil || c == nil {
		return f, err
	}
	if f.CA == "" {
		f.CA = c.TLSCA
	}
	if f.Cert == "" && f.Key == "" {
		f.Cert, f.Key = c.TLSCert, c.TLSKey
	}
	return f, nil
}

// configCommand is `kilnctl config`: contexts in the config file.
func (a *app) configCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Named contexts (cluster addresses and credentials) in kilnctl's config file",
		Long: "A context names a cluster: its coordinator addresses and, optionally, a token\n" +
			"file and TLS files. 'use-context' makes one the default; --context NAME picks\n" +
			"one for a single command. Flags and KILN_* variables override the context.\n" +
			"The file is $" + EnvConfig + ", else kiln/config.yaml in the user config\n" +
			"directory (~/.config on Linux), written with mode 0600. It stores paths,\n" +
			"never the token itself.",
	}
	var (
		tokenFile string
		use       bool
	)
	set := &cobra.Command{
		Use:   "set-context NAME [--coordinators A,B] [--token-file F] [--tls-ca F] [--tls-cert F --tls-key F] [--use]",
		Short: "Create a context or change the settings given",
		Args:  exactArgs(1, "a context name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !contextName.MatchString(name) {
				return usageErrorf("context name %q: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
			}
			cfg, path, err := loadConfig()
			if err != nil {
				return usageErrorf("%w", err)
			}
			c, exists := cfg.Contexts[name]
			if !exists {
				c = &ClusterContext{}
			}
			fl := cmd.Flags()
			if fl.Changed("coordinators") {
				c.Coordinators = nil
				for _, s := range a.coordinators {
					if s = strings.TrimSpace(s); s != "" && !slices.Contains(c.Coordinators, s) {
						c.Coordinators = append(c.Coordinators, s)
					}
				}
			}
			files := []struct {
				flag string
				val  string
				dst  *string
			}{
				{"token-file", tokenFile, &c.TokenFile},
				{"tls-ca", a.tls.CA, &c.TLSCA},
				{"tls-cert", a.tls.Cert, &c.TLSCert},
				{"tls-key", a.tls.Key, &c.TLSKey},
			}
			for _, f := range files {
				if !fl.Changed(f.flag) {
					continue
				}
				if f.val == "" { // --tls-ca= clears the setting
					*f.dst = ""
					continue
				}
				abs, err := filepath.Abs(f.val)
				if err != nil {
					return usageErrorf("--%s: %w", f.flag, err)
				}
				if _, err := os.Stat(abs); err != nil {
					return usageErrorf("--%s: %w", f.flag, err)
				}
				*f.dst = abs
			}
			if len(c.Coordinators) == 0 {
				return usageErrorf("context %q has no coordinators: give --coordinators A,B,...", name)
			}
			if (c.TLSCert == "") != (c.TLSKey == "") {
				return usageErrorf("context %q: --tls-cert and --tls-key go together", name)
			}
			cfg.Contexts[name] = c
			if use || cfg.CurrentContext == "" {
				cfg.CurrentContext = name
			}
			if err := cfg.save(path); err != nil {
				return err
			}
			verb := "created"
			if exists {
				verb = "updated"
			}
			fmt.Fprintf(a.stdout, "context %s %s in %s", name, verb, path)
			if cfg.CurrentContext == name {
				fmt.Fprint(a.stdout, " (in use)")
			}
			fmt.Fprintln(a.stdout)
			return nil
		}),
	}
	set.Flags().StringVar(&tokenFile, "token-file", "", "file holding the API token (its path is stored, not the token)")
	set.Flags().BoolVar(&use, "use", false, "also make it the current context (the first context always is)")

	useCmd := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the context commands use by default",
		Args:  exactArgs(1, "a context name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			cfg, path, err := loadConfig()
			if err != nil {
				return usageErrorf("%w", err)
			}
			if _, ok := cfg.Contexts[args[0]]; !ok {
				return usageErrorf("context %q is not in %s (hint: 'kilnctl config get-contexts' lists them; 'kilnctl config set-context' adds one)", args[0], path)
			}
			cfg.CurrentContext = args[0]
			if err := cfg.save(path); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "using context %s\n", args[0])
			return nil
		}),
	}

	del := &cobra.Command{
		Use:   "delete-context NAME",
		Short: "Remove a context",
		Args:  exactArgs(1, "a context name"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			cfg, path, err := loadConfig()
			if err != nil {
				return usageErrorf("%w", err)
			}
			if _, ok := cfg.Contexts[args[0]]; !ok {
				return usageErrorf("context %q is not in %s", args[0], path)
			}
			delete(cfg.Contexts, args[0])
			if cfg.CurrentContext == args[0] {
				cfg.CurrentContext = ""
			}
			if err := cfg.save(path); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "context %s deleted\n", args[0])
			return nil
		}),
	}

	var output string
	get := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts; * marks the current one",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			cfg, _, err := loadConfig()
			if err != nil {
				return usageErrorf("%w", err)
			}
			if structured(output) {
				return writeOutput(a.stdout, output, cfg)
			}
			names := make([]string, 0, len(cfg.Contexts))
			for n := range cfg.Contexts {
				names = append(names, n)
			}
			slices.Sort(names)
			t := newTable(a.stdout)
			fmt.Fprintln(t, "CURRENT\tNAME\tCOORDINATORS\tTOKEN-FILE\tTLS-CA")
			for _, n := range names {
				c := cfg.Contexts[n]
				cur := ""
				if n == cfg.CurrentContext {
					cur = "*"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", cur, n, strings.Join(c.Coordinators, ","), orDash(c.TokenFile), orDash(c.TLSCA))
			}
			return t.Flush()
		}),
	}
	addOutputFlag(get, &output)

	cur := &cobra.Command{
		Use:   "current-context",
		Short: "Print the current context's name",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			cfg, _, err := loadConfig()
			if err != nil {
				return usageErrorf("%w", err)
			}
			if cfg.CurrentContext == "" {
				return &ExitError{Code: ExitFailed, Err: errors.New("no current context (hint: 'kilnctl config use-context NAME')")}
			}
			fmt.Fprintln(a.stdout, cfg.CurrentContext)
			return nil
		}),
	}
	cmd.AddCommand(set, useCmd, del, get, cur)
	return cmd
}
