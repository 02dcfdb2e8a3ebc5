// Package buildfile loads a build file in any dialect Kiln understands: a
// Kiln pipeline file (internal/pipeline) or an AWS CodeBuild buildspec
// (internal/buildspec). The dialect is picked by content, never by name:
// a YAML mapping at the top with a phases key, or with a version key and
// neither steps nor stages, is a buildspec; anything else (including YAML
// that does not parse) is a Kiln pipeline file, whose parser reports the
// problems.
package buildfile

import (
	"time"

	"bytes"
	"path"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/buildspec"
	"github.com/kiln-ci/kiln/internal/pipeline"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Dialects.
const (
	Kiln      = "kiln"
	Buildspec = "buildspec"
)

// File is a parsed, valid build file.
type File struct {
	// Dialect is Kiln or Buildspec.
	Dialect string
	// Filename is the name given to Load.
	Filename string
	// Pipeline is set for the kiln dialect.
	Pipeline *pipeline.Pipeline
	// Buildspec is set for the buildspec dialect.
	Buildspec *buildspec.Spec
	// Warnings are "file:line:col: warning: ..." lines, in file order.
	Warnings []string
}

// Load detects the dialect of data and parses it. filename is used in
// positions only. On an invalid file the error is a *pipeline.Errors
// listing every problem with file:line:column.
func Load(filename string, data []byte) (*File, error) {
	f := &File{Dialect: Detect(data), Filename: filename}
	switch f.Dialect {
	case Buildspec:
		s, warns, err := buildspec.Parse(filename, data)
		if err != nil {
			return nil, err
		}
		f.Buildspec = s
		for _, w := range warns {
			f.Warnings = append(f.Warnings, w.String())
		}
	default:
		p, err := pipeline.Parse(filename, data)
		if err != nil {
			return nil, err
		}
		f.Pipeline = p
	}
	return f, nil
}

// Detect returns the dialect of data: Buildspec for a YAML mapping with a
// phases key, or with a version key but no steps or stages key; else Kiln.
func Detect(data []byte) string {
	if len(data) > pipeline.MaxFileSize {
		return Kiln
	}
	keys := topKeys(data)
	switch {
	case keys["phases"]:
		return Buildspec
	case keys["version"] && !keys["steps"] && !keys["stages"]:
		return Buildspec
	}
	return Kiln
}

// topKeys returns the keys of the first document's top-level mapping, or
// nil when it is not a mapping or does not parse.
func topKeys(data []byte) (keys map[string]bool) {
	defer func() {
		if recover() != nil {
			keys = nil
		}
	}()
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil
	}
	keys = map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Kind == yaml.ScalarNode {
			keys[k.Value] = true
		}
	}
	return keys
}

// Steps returns the build's steps with defaults applied, with `if`
// conditions evaluated for a manual run without branch or tag.
func (f *File) Steps() []*kilnv1.StepSpec {
	steps, _ := f.Resolve(pipeline.Context{Event: "manual"})
	return steps
}

// Resolve returns the build's steps for a submit in ctx: defaults applied,
// matrix expanded, needs resolved and `if` conditions evaluated (steps
// whose condition is false carry a skip reason).
func (f *File) Resolve(ctx pipeline.Context) ([]*kilnv1.StepSpec, error) {
	switch {
	case f.Buildspec != nil:
		return []*kilnv1.StepSpec{f.Buildspec.Step()}, nil
	case f.Pipeline != nil:
		return f.Pipeline.Resolve(ctx)
	}
	return nil, nil
}

// Concurrency returns the build's concurrency group, if the file sets one.
func (f *File) Concurrency() *pipeline.Concurrency {
	if f.Pipeline != nil {
		return f.Pipeline.Concurrency
	}
	return nil
}

// ArtifactRetention returns how long the build's artifacts are kept after
// it finishes; 0 (the cluster default) when the file sets none.
func (f *File) ArtifactRetention() time.Duration {
	if f.Pipeline != nil {
		return f.Pipeline.ArtifactRetention
	}
	return 0
}

// Env returns the build-wide environment: the pipeline's env for the kiln
// dialect; nil for a buildspec (its variables are the step's env).
func (f *File) Env() map[string]string {
	if f.Pipeline != nil {
		return f.Pipeline.Env
	}
	return nil
}

// Name returns the build's name from the file: the pipeline's name (may be
// empty), or for a buildspec the file's base name ("buildspec" when the
// file has no name).
func (f *File) Name() string {
	if f.Pipeline != nil {
		return f.Pipeline.Name
	}
	if f.Filename == "" {
		return "buildspec"
	}
	return path.Base(f.Filename)
}

// NumSteps returns the number of steps.
func (f *File) NumSteps() int {
	if f.Pipeline != nil {
		return f.Pipeline.NumSteps()
	}
	if f.Buildspec != nil {
		return 1
	}
	return 0
}
