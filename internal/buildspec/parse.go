package buildspec

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/pipeline"
	"github.com/kiln-ci/kiln/internal/yamlpos"
)

// Limits on buildspec files.
const (
	// MaxFileSize is the largest buildspec accepted, in bytes (as for
	// pipeline files).
	MaxFileSize = pipeline.MaxFileSize
	// maxErrors bounds the problems reported for one file.
	maxErrors = 100
	// maxDepth bounds alias resolution.
	maxDepth = 50
)

// Phase names in execution order, as written in the file.
var phaseOrder = []string{"install", "pre_build", "build", "post_build"}

// Keys known at each level.
var (
	topKeys       = []string{"version", "run-as", "env", "proxy", "batch", "phases", "artifacts", "reports", "cache"}
	envKeys       = []string{"shell", "variables", "parameter-store", "exported-variables", "secrets-manager", "git-credential-helper"}
	phaseKeys     = []string{"run-as", "on-failure", "runtime-versions", "commands", "finally"}
	artifactKeys  = []string{"files", "name", "discard-paths", "base-directory", "exclude-paths", "enable-symlinks", "s3-prefix", "secondary-artifacts"}
	reportKeys    = []string{"files", "base-directory", "discard-paths", "file-format"}
	reportFormats = []string{"JUNITXML", "CUCUMBERJSON", "TESTNGXML", "NUNITXML", "NUNIT3XML", "VISUALSTUDIOTRX", "CLOVERXML", "COBERTURAXML", "JACOCOXML", "SIMPLECOV"}
)

var (
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Spec is a parsed, valid buildspec file.
type Spec struct {
	// File is the file name given to Parse.
	File string
	// Version is the version as written ("0.2").
	Version string
	// Shell is "bash", "sh" or "" (the agent's shell: bash, else /bin/sh).
	Shell string
	// Variables is env.variables.
	Variables map[string]string
	// ExportedVariables is env.exported-variables.
	ExportedVariables []string
	// Secrets are the variables of env.parameter-store and
	// env.secrets-manager, in file order: each is the Kiln secret of the
	// same name.
	Secrets []string
	// Phases holds the phases present in the file, in execution order.
	Phases []*Phase
	// Artifacts is nil when the file has no artifacts section.
	Artifacts *Artifacts
	// Reports holds the report groups in file order (all formats).
	Reports []*Report
}

// Phase is one phase of the file.
type Phase struct {
	// Name is the phase as written: install, pre_build, build or post_build.
	Name string
	// OnFailure is "", "ABORT" or "CONTINUE".
	OnFailure string
	Commands  []string
	Finally   []string
	// Line and Column locate the phase's key.
	Line, Column int
}

// Upper returns the phase name as CodeBuild logs it (PRE_BUILD).
func (p *Phase) Upper() string { return strings.ToUpper(p.Name) }

// Artifacts is the artifacts section.
type Artifacts struct {
	// Files and BaseDirectory are as written (cleaned).
	Files         []string
	BaseDirectory string
	DiscardPaths  bool
	Name          string
	// Globs are Files joined to BaseDirectory: globs relative to the
	// workspace, as StepSpec.Artifacts holds them.
	Globs []string
}

// Report is one report group.
type Report struct {
	Group         string
	Files         []string
	BaseDirectory string
	// FileFormat is upper-case; JUNITXML when the file does not set it.
	FileFormat string
	// Globs are Files joined to BaseDirectory, relative to the workspace.
	Globs []string
}

// Warning is something in the file that Kiln accepts but does not honour
// as CodeBuild would.
type Warning struct {
	File         string
	Line, Column int
	Msg          string
}

// String formats the warning as "file:line:col: warning: msg".
// The position is written as in pipeline errors.
func (w Warning) String() string {
	return (&pipeline.Error{File: w.File, Line: w.Line, Column: w.Column, Msg: "warning: " + w.Msg}).Error()
}

// Parse parses a buildspec file. filename is used in positions only. When
// the file is invalid the error is a *pipeline.Errors holding every problem
// found, each with file:line:column; warnings are returned either way.
func Parse(filename string, data []byte) (*Spec, []Warning, error) {
	p := &parser{file: filename}
	if len(data) > MaxFileSize {
		p.add(&pipeline.Error{File: filename,
			Msg:  fmt.Sprintf("file is %d bytes, larger than the limit of %d bytes (1 MiB)", len(data), MaxFileSize),
			Hint: "move scripts out of the buildspec into files in the repository"})
		return nil, nil, p.result()
	}
	root := yamlpos.Decode(data, p.syntaxError, func(extra *yaml.Node) {
		p.errorf(extra, "remove the '---' separator", "a buildspec holds one YAML document; found another")
	})
	if root == nil {
		if len(p.errs) == 0 {
			p.errorf(nil, "start with version: 0.2 and a phases: section", "buildspec is empty")
		}
		return nil, p.warns, p.result()
	}
	s := p.spec(root)
	sort.SliceStable(p.warns, func(i, j int) bool {
		a, b := p.warns[i], p.warns[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	// Warnings come back with errors too: both help fix the file.
	if err := p.result(); err != nil {
		return nil, p.warns, err
	}
	return s, p.warns, nil
}

type parser struct {
	file      string
	errs      []*pipeline.Error
	warns     []Warning
	truncated bool
}

func (p *parser) add(e *pipeline.Error) {
	if len(p.errs) >= maxErrors {
		p.truncated = true
		return
	}
	p.errs = append(p.errs, e)
}

func (p *parser) errorf(n *yaml.Node, hint, format string, args ...any) {
	e := &pipeline.Error{File: p.file, Msg: fmt.Sprintf(format, args...), Hint: hint}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	} else {
		e.Line, e.Column = 1, 1
	}
	p.add(e)
}

func (p *parser) warnf(n *yaml.Node, format string, args ...any) {
	w := Warning{File: p.file, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		w.Line, w.Column = n.Line, n.Column
	}
	if len(p.warns) < maxErrors {
		p.warns = append(p.warns, w)
	}
}

func (p *parser) result() error {
	if len(p.errs) == 0 {
		return nil
	}
	list := p.errs
	sort.SliceStable(list, func(i, j int) bool {
		if list[i].Line != list[j].Line {
			return list[i].Line < list[j].Line
		}
		return list[i].Column < list[j].Column
	})
	if p.truncated {
		list = append(list, &pipeline.Error{File: p.file,
			Msg: fmt.Sprintf("too many errors; only the first %d are shown", maxErrors)})
	}
	return &pipeline.Errors{List: list}
}

// syntaxError records a YAML syntax error (the library gives no column).
func (p *parser) syntaxError(line int, msg string) {
	p.add(&pipeline.Error{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

// resolve follows aliases (buildspecs often share command lists through
// anchors). It returns nil for an alias cycle or a too deep chain.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > maxDepth {
			return nil
		}
		n = n.Alias
	}
	return n
}

// fields checks that n is a mapping with unique, known keys and returns the
// known ones by name; nil after recording a problem when n is not a mapping.
func (p *parser) fields(n *yaml.Node, what string, known []string) map[string]yamlpos.Field {
	n = p.kind(n, yaml.MappingNode, what)
	if n == nil {
		return nil
	}
	return yamlpos.Fields(n, yamlpos.Keys{What: what, Known: known, Fold: foldKey}, p.errorf)
}

// foldKey makes the spellings of a key that differ only in case or in '-'
// for '_' equal, for did-you-mean hints (pre-build for pre_build).
func foldKey(k string) string {
	return strings.ReplaceAll(strings.ToLower(k), "-", "_")
}

// kind resolves aliases and checks n's kind; a null counts as an empty
// mapping or sequence. It returns the resolved node, or nil after recording
// the problem.
func (p *parser) kind(n *yaml.Node, kind yaml.Kind, what string) *yaml.Node {
	r := resolve(n)
	if r == nil {
		p.errorf(n, "", "%s: alias chain too deep", what)
		return nil
	}
	if yamlpos.IsNull(r) && kind != yaml.ScalarNode {
		return &yaml.Node{Kind: kind, Line: r.Line, Column: r.Column}
	}
	if r.Kind != kind {
		want := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: "a single value"}[kind]
		p.errorf(n, "", "%s must be %s, not %s", what, want, kindName(r))
		return nil
	}
	return r
}

// str returns the text of a scalar (numbers and booleans keep their text).
func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	r := p.kind(n, yaml.ScalarNode, what)
	if r == nil {
		return "", false
	}
	if yamlpos.IsNull(r) {
		return "", true
	}
	if strings.IndexByte(r.Value, 0) >= 0 {
		p.errorf(n, "", "%s contains a NUL byte", what)
		return "", false
	}
	return r.Value, true
}

// strList reads a list of scalars.
func (p *parser) strList(n *yaml.Node, what string, cmd bool) []string {
	r := p.kind(n, yaml.SequenceNode, what)
	if r == nil {
		return nil
	}
	out := make([]string, 0, len(r.Content))
	for i, item := range r.Content {
		it := resolve(item)
		if cmd && it != nil && it.Kind == yaml.MappingNode {
			p.errorf(item, `quote the whole command: YAML reads "key: value" (a colon followed by a space) as a mapping`,
				"%s[%d] is a mapping, not a command", what, i)
			continue
		}
		s, ok := p.str(item, fmt.Sprintf("%s[%d]", what, i))
		if !ok {
			continue
		}
		if cmd && strings.TrimSpace(s) == "" {
			p.errorf(item, "remove the empty item", "%s[%d] is an empty command", what, i)
			continue
		}
		out = append(out, s)
	}
	return out
}

// boolean reads yes/no/true/false.
func (p *parser) boolean(n *yaml.Node, what string) bool {
	s, ok := p.str(n, what)
	if !ok {
		return false
	}
	switch strings.ToLower(s) {
	case "yes", "true":
		return true
	case "no", "false", "":
		return false
	}
	p.errorf(n, "use yes or no", "%s: want yes or no, not %q", what, s)
	return false
}

func (p *parser) spec(root *yaml.Node) *Spec {
	s := &Spec{File: p.file}
	f := p.fields(root, "the buildspec", topKeys)
	if f == nil {
		return s
	}
	if v, ok := f["version"]; ok {
		s.Version = p.version(v.Val)
	} else {
		p.errorf(root, "add version: 0.2 at the top", "buildspec has no version")
	}
	if v, ok := f["run-as"]; ok {
		p.errorf(v.Key, "run the commands as the agent's user, or use sudo -u in the commands", "run-as is not supported by Kiln")
	}
	if v, ok := f["batch"]; ok {
		p.errorf(v.Key, "write a Kiln pipeline file (.kiln.yaml) with several steps instead",
			"batch builds are not supported by Kiln")
	}
	if v, ok := f["proxy"]; ok {
		p.warnf(v.Key, "proxy is ignored: Kiln agents use their own network settings")
	}
	if v, ok := f["cache"]; ok {
		p.warnf(v.Key, "cache is not supported by Kiln yet and is ignored: every job starts in a fresh workspace")
	}
	if v, ok := f["env"]; ok {
		p.env(v.Val, s)
	}
	if v, ok := f["phases"]; ok {
		p.phases(v.Val, s)
	} else {
		p.errorf(root, "add a phases: section with at least a build: phase", "buildspec has no phases")
	}
	if v, ok := f["artifacts"]; ok {
		s.Artifacts = p.artifacts(v.Val)
	}
	if v, ok := f["reports"]; ok {
		s.Reports = p.reports(v.Val)
	}
	return s
}

func (p *parser) version(n *yaml.Node) string {
	v, ok := p.str(n, "version")
	if !ok {
		return ""
	}
	switch f, err := strconv.ParseFloat(v, 64); {
	case err == nil && f == 0.2:
		return v
	case err == nil && f == 0.1:
		p.errorf(n, "set version: 0.2; then all commands share one shell, so cd and variables carry over from one command to the next",
			"buildspec version 0.1 is not supported by Kiln: it runs every command in a separate shell")
	default:
		p.errorf(n, "set version: 0.2", "unsupported buildspec version %q; Kiln runs version 0.2", v)
	}
	return v
}

func (p *parser) env(n *yaml.Node, s *Spec) {
	f := p.fields(n, "env", envKeys)
	if f == nil {
		return
	}
	if v, ok := f["shell"]; ok {
		if sh, ok := p.str(v.Val, "env.shell"); ok {
			switch sh {
			case "bash", "/bin/bash":
				s.Shell = "bash"
			case "sh", "/bin/sh":
				s.Shell = "sh"
			default:
				p.errorf(v.Val, "use bash or /bin/sh", "env.shell %q is not supported by Kiln", sh)
			}
		}
	}
	if v, ok := f["variables"]; ok {
		s.Variables = p.variables(v.Val)
	}
	if v, ok := f["exported-variables"]; ok {
		for _, name := range p.strList(v.Val, "env.exported-variables", false) {
			if !envNameRE.MatchString(name) {
				p.errorf(v.Val, "", "env.exported-variables: invalid variable name %q", name)
				continue
			}
			s.ExportedVariables = append(s.ExportedVariables, name)
		}
		p.warnf(v.Key, "env.exported-variables: Kiln does not export variables out of the job; "+
			"they are shell variables, visible to later commands and phases of this job only")
	}
	for _, k := range []string{"parameter-store", "secrets-manager"} {
		if v, ok := f[k]; ok {
			p.secretRefs(k, v.Val, s)
		}
	}
	if v, ok := f["git-credential-helper"]; ok && p.boolean(v.Val, "env.git-credential-helper") {
		p.errorf(v.Key, "configure git credentials on the agent, or remove the key",
			"env.git-credential-helper is not supported by Kiln")
	}
}

// secretRefs maps env.parameter-store and env.secrets-manager entries
// (VARIABLE: reference) to Kiln secrets named after the variable, with a
// warning naming each mapping: Kiln does not call AWS; an operator sets
// the Kiln secret (kilnctl secret set VARIABLE).
func (p *parser) secretRefs(key string, n *yaml.Node, s *Spec) {
	what := "env." + key
	r := p.kind(n, yaml.MappingNode, what)
	if r == nil {
		return
	}
	p.eachKey(r, what, "variable", func(k, v *yaml.Node) {
		if !envNameRE.MatchString(k.Value) {
			p.errorf(k, "use letters, digits and '_', not starting with a digit", "invalid variable name %q", k.Value)
			return
		}
		ref, ok := p.str(v, what+"."+k.Value)
		if !ok {
			return
		}
		if _, clash := s.Variables[k.Value]; clash {
			p.errorf(k, "remove it from env.variables", "%s is both in env.variables and in %s", k.Value, what)
			return
		}
		if slices.Contains(s.Secrets, k.Value) {
			p.errorf(k, "", "%s is set by both env.parameter-store and env.secrets-manager", k.Value)
			return
		}
		s.Secrets = append(s.Secrets, k.Value)
		p.warnf(k, "%s.%s: %q is not fetched from AWS; the job gets the Kiln secret %s instead (kilnctl secret set %s)",
			what, k.Value, ref, k.Value, k.Value)
	})
}

func (p *parser) variables(n *yaml.Node) map[string]string {
	r := p.kind(n, yaml.MappingNode, "env.variables")
	if r == nil {
		return nil
	}
	out := map[string]string{}
	p.eachKey(r, "env.variables", "variable", func(k, v *yaml.Node) {
		if !envNameRE.MatchString(k.Value) {
			p.errorf(k, "use letters, digits and '_', not starting with a digit", "invalid variable name %q", k.Value)
			return
		}
		if val, ok := p.str(v, "env.variables."+k.Value); ok {
			out[k.Value] = val
		}
	})
	return out
}

// eachKey calls fn for each entry of the mapping r whose key is a scalar
// not seen before in r, and reports the other keys: what names the mapping
// and noun what its keys name.
func (p *parser) eachKey(r *yaml.Node, what, noun string, fn func(k, v *yaml.Node)) {
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(r.Content); i += 2 {
		k, v := r.Content[i], r.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			p.errorf(k, "", "%s: keys must be %s names", what, noun)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			p.errorf(k, "", "duplicate %s %q (first at line %d)", noun, k.Value, first.Line)
			continue
		}
		seen[k.Value] = k
		fn(k, v)
	}
}

func (p *parser) phases(n *yaml.Node, s *Spec) {
	r := p.kind(n, yaml.MappingNode, "phases")
	if r == nil {
		return
	}
	f := p.fields(r, "phases", phaseOrder)
	for _, name := range phaseOrder {
		v, ok := f[name]
		if !ok {
			continue
		}
		ph := p.phase(name, v)
		if ph != nil {
			s.Phases = append(s.Phases, ph)
		}
	}
	total := 0
	for _, ph := range s.Phases {
		total += len(ph.Commands) + len(ph.Finally)
	}
	if total == 0 && len(p.errs) == 0 {
		p.errorf(n, "add commands: to a phase such as build:", "buildspec has no commands in any phase")
	}
}

func (p *parser) phase(name string, v yamlpos.Field) *Phase {
	what := "phases." + name
	ph := &Phase{Name: name, Line: v.Key.Line, Column: v.Key.Column}
	f := p.fields(v.Val, what, phaseKeys)
	if f == nil {
		return nil
	}
	if x, ok := f["run-as"]; ok {
		p.errorf(x.Key, "run the commands as the agent's user, or use sudo -u in the commands", "%s.run-as is not supported by Kiln", what)
	}
	if x, ok := f["runtime-versions"]; ok {
		p.warnf(x.Key, "%s.runtime-versions is ignored: install runtimes in your commands or use an agent with them", what)
	}
	if x, ok := f["on-failure"]; ok {
		if of, ok := p.str(x.Val, what+".on-failure"); ok {
			switch {
			case of == "ABORT" || of == "CONTINUE":
				ph.OnFailure = of
			case strings.HasPrefix(of, "RETRY"):
				p.errorf(x.Val, "use ABORT or CONTINUE; retries of a failed job are set with retry.on_failure in a Kiln pipeline file",
					"%s.on-failure %s is not supported by Kiln", what, of)
			default:
				hint := "use ABORT or CONTINUE"
				if u := strings.ToUpper(of); u == "ABORT" || u == "CONTINUE" {
					hint = fmt.Sprintf("write it in capitals: %s", u)
				}
				p.errorf(x.Val, hint, "%s.on-failure: unknown value %q", what, of)
			}
		}
	}
	if x, ok := f["commands"]; ok {
		ph.Commands = p.strList(x.Val, what+".commands", true)
	}
	if x, ok := f["finally"]; ok {
		ph.Finally = p.strList(x.Val, what+".finally", true)
	}
	return ph
}

// relGlob checks a path or glob relative to the workspace.
func (p *parser) relGlob(n *yaml.Node, what, s string) (string, bool) {
	if strings.HasPrefix(s, "/") {
		p.errorf(n, "write it relative to the source directory", "%s %q is an absolute path", what, s)
		return "", false
	}
	c := path.Clean(s)
	if c == ".." || strings.HasPrefix(c, "../") {
		p.errorf(n, "artifacts and reports must be inside the workspace", "%s %q leaves the workspace", what, s)
		return "", false
	}
	return c, true
}

// globs reads files and base-directory into workspace-relative globs.
func (p *parser) globs(f map[string]yamlpos.Field, what string) (files []string, base string, globs []string) {
	if v, ok := f["base-directory"]; ok {
		if b, ok := p.str(v.Val, what+".base-directory"); ok && b != "" {
			base, _ = p.relGlob(v.Val, what+".base-directory", b)
		}
	}
	v, ok := f["files"]
	if !ok {
		return nil, base, nil
	}
	written := p.strList(v.Val, what+".files", false)
	r := resolve(v.Val)
	for i, file := range written {
		node := v.Val
		if r != nil && r.Kind == yaml.SequenceNode && i < len(r.Content) {
			node = r.Content[i]
		}
		if strings.TrimSpace(file) == "" {
			p.errorf(node, "", "%s.files[%d] is empty", what, i)
			continue
		}
		g, ok := p.relGlob(node, what+".files", file)
		if !ok {
			continue
		}
		files = append(files, g)
		if base != "" && base != "." {
			g = path.Join(base, g)
		}
		globs = append(globs, g)
	}
	return files, base, globs
}

func (p *parser) artifacts(n *yaml.Node) *Artifacts {
	f := p.fields(n, "artifacts", artifactKeys)
	if f == nil {
		return nil
	}
	a := &Artifacts{}
	a.Files, a.BaseDirectory, a.Globs = p.globs(f, "artifacts")
	if _, ok := f["files"]; !ok {
		p.errorf(n, "list the files to keep, such as files: ['**/*']", "artifacts has no files")
	}
	if v, ok := f["discard-paths"]; ok && p.boolean(v.Val, "artifacts.discard-paths") {
		a.DiscardPaths = true
		p.warnf(v.Key, "artifacts.discard-paths: yes is ignored: Kiln keeps artifacts at their paths in the workspace")
	}
	if v, ok := f["name"]; ok {
		a.Name, _ = p.str(v.Val, "artifacts.name")
		p.warnf(v.Key, "artifacts.name is ignored: Kiln stores the artifacts under the build and job")
	}
	for _, k := range []string{"exclude-paths", "enable-symlinks", "s3-prefix"} {
		if v, ok := f[k]; ok {
			p.warnf(v.Key, "artifacts.%s is not supported by Kiln and is ignored", k)
		}
	}
	if v, ok := f["secondary-artifacts"]; ok {
		p.warnf(v.Key, "artifacts.secondary-artifacts is not supported by Kiln: their files are not kept; list them in artifacts.files")
	}
	return a
}

func (p *parser) reports(n *yaml.Node) []*Report {
	r := p.kind(n, yaml.MappingNode, "reports")
	if r == nil {
		return nil
	}
	var out []*Report
	p.eachKey(r, "reports", "report group", func(k, v *yaml.Node) {
		what := "reports." + k.Value
		f := p.fields(v, what, reportKeys)
		if f == nil {
			return
		}
		rep := &Report{Group: k.Value, FileFormat: "JUNITXML"}
		rep.Files, rep.BaseDirectory, rep.Globs = p.globs(f, what)
		if _, ok := f["files"]; !ok {
			p.errorf(k, "list the report files, such as files: ['**/junit*.xml']", "%s has no files", what)
		}
		if x, ok := f["discard-paths"]; ok && p.boolean(x.Val, what+".discard-paths") {
			p.warnf(x.Key, "%s.discard-paths: yes is ignored: Kiln reads the reports at their paths", what)
		}
		if x, ok := f["file-format"]; ok {
			if ff, ok := p.str(x.Val, what+".file-format"); ok {
				ff = strings.ToUpper(ff)
				switch {
				case ff == "JUNITXML":
				case slices.Contains(reportFormats, ff):
					p.warnf(x.Val, "%s: file-format %s is not supported by Kiln, which reads JUnit XML only; the report is ignored", what, ff)
				default:
					p.errorf(x.Val, "known formats: "+strings.Join(reportFormats, ", "), "%s: unknown file-format %q", what, ff)
				}
				rep.FileFormat = ff
			}
		}
		out = append(out, rep)
	})
	return out
}

// kindName describes a node for messages; unlike yamlpos.KindName it shows
// a scalar's value.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode, yaml.SequenceNode, yaml.AliasNode, yaml.DocumentNode:
		return yamlpos.KindName(n)
	}
	if yamlpos.IsNull(n) {
		return "empty"
	}
	return fmt.Sprintf("the value %q", n.Value)
}
