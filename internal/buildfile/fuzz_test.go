package buildfile

import (
	"testing"

	"github.com/kiln-ci/kiln/internal/pipeline"
)

// FuzzLoad drives the coordinator's decoder of a client's build file
// (SubmitBuild's spec_yaml): dialect detection, either parser, and the
// resolution of conditions into steps never panic, a valid file has
// exactly the parse of its dialect, and resolution keeps at most as many
// steps as the file declares.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"steps:\n  - key: a\n    command: make\n",
		"name: x\nenv: {A: b}\nsteps:\n  - key: a\n    if: branch == 'main'\n    secrets: [K]\n    commands: [make, test]\n  - key: b\n    depends_on: [a]\n    matrix: {os: [l, m]}\n    command: echo ${{ matrix.os }}\n",
		"stages:\n  - name: s\n    steps:\n      - key: a\n        command: x\n",
		"version: 0.2\nphases:\n  build:\n    commands: [make]\nenv:\n  secrets-manager:\n    K: arn:x\n",
		"version: 0.2\nphase:\n  build: {}\n",
		"- a\n- b\n",
		"&a [*a]",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		bf, err := Load("kiln.yaml", []byte(data))
		if err != nil {
			return
		}
		switch {
		case bf.Dialect == Kiln && (bf.Pipeline == nil || bf.Buildspec != nil):
			t.Fatalf("kiln dialect with pipeline %v, buildspec %v", bf.Pipeline != nil, bf.Buildspec != nil)
		case bf.Dialect == Buildspec && (bf.Buildspec == nil || bf.Pipeline != nil):
			t.Fatalf("buildspec dialect with pipeline %v, buildspec %v", bf.Pipeline != nil, bf.Buildspec != nil)
		}
		_ = bf.Env()
		_ = bf.Name()
		_ = bf.Concurrency()
		_ = bf.ArtifactRetention()
		steps, err := bf.Resolve(pipeline.Context{Branch: "main", Event: "push", Env: map[string]string{"A": "1"}})
		if err == nil && len(steps) > bf.NumSteps() {
			t.Fatalf("%d steps resolved from a file of %d", len(steps), bf.NumSteps())
		}
	})
}
