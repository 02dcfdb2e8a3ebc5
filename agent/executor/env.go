package executor

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
)

// DefaultPassEnv are the agent's environment variables a job gets
// without asking (patterns as for path.Match): what a shell and common
// tools need to work, and nothing that usually holds a secret. Everything
// else in the agent's environment (cloud keys, tokens, KILN_* settings of
// the agent itself) stays out of jobs unless the agent is started with
// --pass-env.
var DefaultPassEnv = []string{
	"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM",
	"LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
}

// ValidatePassEnv checks that every pattern is a valid path.Match
// pattern of a variable name.
func ValidatePassEnv(patterns []string) error {
	for _, p := range patterns {
		if p == "" || strings.Contains(p, "=") {
			return fmt.Errorf("pass-env pattern %q must be a variable name or glob", p)
		}
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("pass-env pattern %q: %w", p, err)
		}
	}
	return nil
}

// BaseEnv is the part of environ (KEY=VALUE entries) whose names match
// DefaultPassEnv or one of extra: the base environment of every job,
// before the build's and step's env and the KILN_* variables.
func BaseEnv(environ []string, extra []string) []string {
	patterns := append(append([]string(nil), DefaultPassEnv...), extra...)
	var out []string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue
		}
		for _, p := range patterns {
			if m, _ := path.Match(p, name); m {
				out = append(out, kv)
				break
			}
		}
	}
	return out
}

// baseEnv is e.Env, or the allow-listed part of the process environment.
func (e *Executor) baseEnv() []string {
	if e.Env != nil {
		return e.Env
	}
	return BaseEnv(os.Environ(), nil)
}

// withoutVars returns env without the variables named.
func withoutVars(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			out = append(out, kv)
		}
	}
	return out
}
