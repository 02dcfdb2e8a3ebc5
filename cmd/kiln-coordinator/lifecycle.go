package main

import (
	"flag"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator"
	"github.com/kiln-ci/kiln/internal/pipeline"
)

// addLifecycleFlags registers the retention, expiry and size-limit flags.
// --artifact-expiry-interval is the deprecated name of --expiry-interval:
// one loop expires artifacts and builds now, and both names set it.
func addLifecycleFlags(fs *flag.FlagSet, cfg *coordinator.Config) {
	fs.DurationVar(&cfg.ExpiryInterval, "expiry-interval", cfg.ExpiryInterval, "how often the leader looks for builds whose artifact or build retention ended")
	fs.DurationVar(&cfg.ExpiryInterval, "artifact-expiry-interval", cfg.ExpiryInterval, "deprecated: the old name of --expiry-interval")
	fs.Func("build-retention", "how long a finished build is kept, with its jobs, logs, test reports, artifacts and uploaded source: a Go duration or days such as 90d; 0 keeps builds forever (default 90d)", func(v string) error {
		d, err := pipeline.ParseRetention(v)
		if err != nil {
			return err
		}
		cfg.BuildRetention = d
		return nil
	})
	fs.IntVar(&cfg.MaxBuildBytes, "max-build-bytes", cfg.MaxBuildBytes, "largest resolved build (bytes, after matrix expansion) a submit may create; at most 3 MiB")
	fs.Int64Var(&cfg.MaxLogBytes, "max-log-bytes", cfg.MaxLogBytes, "log bytes kept per job attempt; output past it is dropped and one marker line says how much")
}

// deprecatedFlags maps old flag names to the names that replace them.
var deprecatedFlags = map[string]string{"artifact-expiry-interval": "expiry-interval"}

// warnDeprecatedFlags logs one warning per deprecated flag given (set
// holds the names of the flags on the command line).
func warnDeprecatedFlags(log *zap.Logger, set map[string]bool) {
	for old, repl := range deprecatedFlags {
		if set[old] {
			log.Warn("flag is deprecated; use its new name", zap.String("flag", "--"+old), zap.String("use", "--"+repl))
		}
	}
}
