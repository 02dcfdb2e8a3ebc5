package pipeline

import (
	"strings"
	"testing"
	"time"
)

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * Day, "0": 0, "0d": 0, "36h": 36 * time.Hour, "1s": time.Second, "1h30m": 90 * time.Minute} {
		if got, err := ParseRetention(in); err != nil || got != want {
			t.Errorf("ParseRetention(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "1.5d", "+1d", "x", "-5m", "99999999999d"} {
		if d, err := ParseRetention(in); err == nil {
			t.Errorf("ParseRetention(%q) = %v, want an error", in, d)
		}
	}
}

func TestArtifactRetentionKey(t *testing.T) {
	if p := mustParse(t, "artifact_retention: 7d\nsteps: [{key: a, command: x}]\n"); p.ArtifactRetention != 7*Day {
		t.Fatalf("retention %v", p.ArtifactRetention)
	}
	if p := mustParse(t, "artifact_retention: 90m\nsteps: [{key: a, command: x}]\n"); p.ArtifactRetention != 90*time.Minute {
		t.Fatalf("retention %v", p.ArtifactRetention)
	}
	if p := mustParse(t, "steps: [{key: a, command: x}]\n"); p.ArtifactRetention != 0 {
		t.Fatalf("retention %v", p.ArtifactRetention)
	}
	for src, want := range map[string]string{
		"name: n\nartifact_retention: 0d\nsteps: [{key: a, command: x}]\n":   `x.yaml:2:21: artifact_retention must be positive, not "0d"`,
		"name: n\nartifact_retention: soon\nsteps: [{key: a, command: x}]\n": `x.yaml:2:21: artifact_retention: invalid duration "soon"`,
		"artifact_retention: -3d\nsteps: [{key: a, command: x}]\n":           `x.yaml:1:21: artifact_retention: invalid duration "-3d"`,
		"artifact_retention: [7d]\nsteps: [{key: a, command: x}]\n":          `x.yaml:1:21: artifact_retention must be a string, not a list`,
		"artifact_retention: 1ns\nsteps: [{key: a, command: x}]\n":           `x.yaml:1:21: artifact_retention "1ns" is shorter than a millisecond`,
		"artifact_retenton: 7d\nsteps: [{key: a, command: x}]\n":             `x.yaml:1:1:`,
	} {
		_, err := Parse("x.yaml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to contain %q", src, err, want)
		}
	}
}
