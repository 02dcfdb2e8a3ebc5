package main

import (
	"flag"
	"io"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kiln-ci/kiln/coordinator"
)

func parseLifecycle(t *testing.T, args ...string) coordinator.Config {
	t.Helper()
	cfg := coordinator.NewConfig()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addLifecycleFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return cfg
}

func TestLifecycleFlags(t *testing.T) {
	def := parseLifecycle(t)
	if def.ExpiryInterval != time.Minute || def.BuildRetention != 90*24*time.Hour || def.MaxBuildBytes != 1<<20 || def.MaxLogBytes != 1<<30 {
		t.Fatalf("defaults: interval %s retention %s build %d log %d", def.ExpiryInterval, def.BuildRetention, def.MaxBuildBytes, def.MaxLogBytes)
	}
	// The deprecated name sets the one expiry interval.
	if got := parseLifecycle(t, "--artifact-expiry-interval", "7s").ExpiryInterval; got != 7*time.Second {
		t.Fatalf("--artifact-expiry-interval 7s: ExpiryInterval %s", got)
	}
	if got := parseLifecycle(t, "--expiry-interval", "9s").ExpiryInterval; got != 9*time.Second {
		t.Fatalf("--expiry-interval 9s: ExpiryInterval %s", got)
	}
	if got := parseLifecycle(t, "--build-retention", "7d").BuildRetention; got != 7*24*time.Hour {
		t.Fatalf("--build-retention 7d: %s", got)
	}
	if got := parseLifecycle(t, "--build-retention", "0").BuildRetention; got != 0 {
		t.Fatalf("--build-retention 0: %s", got)
	}
	cfg := parseLifecycle(t, "--max-build-bytes", "4194304")
	cfg.InitialCluster = map[string]string{cfg.NodeID: cfg.RaftAddr}
	if err := cfg.Validate(); err == nil || err.Error() != "max-build-bytes: 4194304 is not within 1..3145728 (a build must fit in one gRPC message)" {
		t.Fatalf("Validate: %v", err)
	}
	cfg = parseLifecycle(t, "--max-log-bytes", "100")
	cfg.InitialCluster = map[string]string{cfg.NodeID: cfg.RaftAddr}
	if err := cfg.Validate(); err == nil || err.Error() != "max-log-bytes: 100 is below the 4096 minimum" {
		t.Fatalf("Validate: %v", err)
	}
}

func TestDeprecatedFlagWarns(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	warnDeprecatedFlags(zap.New(core), map[string]bool{"expiry-interval": true})
	if logs.Len() != 0 {
		t.Fatal("warned about the new name")
	}
	warnDeprecatedFlags(zap.New(core), map[string]bool{"artifact-expiry-interval": true})
	if e := logs.All(); len(e) != 1 || e[0].ContextMap()["use"] != "--expiry-interval" {
		t.Fatalf("warnings %v", e)
	}
}
