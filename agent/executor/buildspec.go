package executor

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kiln-ci/kiln/internal/buildspec"
)

// loadBuildspec reads the attempt's buildspec (Spec.Buildspec) from the
// workspace — the checked-out source, as CodeBuild reads it — and makes
// its generated script the one the runner starts: its env.variables under
// the build's and step's, its artifacts and JUnit reports added to the
// step's. The file is opened through an os.Root of the workspace, so a
// symbolic link cannot make the agent read a file outside it.
func (p *Process) loadBuildspec(out io.Writer) error {
	root, err := os.OpenRoot(p.workspace)
	if err != nil {
		return fmt.Errorf("open workspace: %w", err)
	}
	defer root.Close()
	f, err := root.Open(p.spec.Buildspec)
	if err != nil {
		return fmt.Errorf("read %s: %w", p.spec.Buildspec, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, buildspec.MaxFileSize+1))
	f.Close()
	if err != nil {
		return fmt.Errorf("read %s: %w", p.spec.Buildspec, err)
	}
	spec, warns, err := buildspec.Parse(p.spec.Buildspec, data)
	for _, w := range warns {
		fmt.Fprintf(out, "kiln: buildspec warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(out, "kiln: invalid buildspec:\n%v\n", err)
		var errs interface{ Unwrap() []error }
		if errors.As(err, &errs) && len(errs.Unwrap()) > 0 {
			return errs.Unwrap()[0] // the first problem, with its position
		}
		return err
	}
	step := spec.Step()
	p.rn.setScript(step.GetCommands()[0], step.GetEnv())
	p.spec.Artifacts = append(p.spec.Artifacts, step.GetArtifacts()...)
	p.spec.JUnit = append(p.spec.JUnit, step.GetJunit()...)
	fmt.Fprintf(out, "kiln: running buildspec %s\n", p.spec.Buildspec)
	return nil
}
