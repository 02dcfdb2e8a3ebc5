package pipeline

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/yamlpos"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Container steps: the step keys image, pull, cpus, memory, network, user
// and services (see docs/pipeline.md, "Containers").

// Limits and values of container steps.
const (
	// MaxServices bounds the services of one step.
	MaxServices = 10
	// MaxCPUs bounds a step's cpus.
	MaxCPUs = 1024
	// MinMemory is the smallest memory limit Docker accepts (6 MiB).
	MinMemory = 6 << 20
	// maxImageLen bounds an image reference (Docker's own limit is 255
	// for the name part).
	maxImageLen = 512
	// DockerLabel is the agent label every step with an image requires:
	// agents that reach a Docker engine announce docker=true.
	DockerLabel = "docker"
	// SandboxLabel is the agent label of agents started with --sandbox;
	// shell steps with network: none require it.
	SandboxLabel = "sandbox"
)

// Pull policies and networks a step may name.
var (
	PullPolicies = []string{"if-not-present", "always", "never"}
	Networks     = []string{"bridge", "none"}
)

var serviceKeys = []string{"name", "image", "env", "command"}

var (
	imageRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)
	serviceRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	userRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$`)
	memoryRE  = regexp.MustCompile(`^([0-9]+)\s*([kKmMgGtT]?)(i?[bB])?$`)
)

// CheckImage returns why name is not an acceptable image reference, or nil.
func CheckImage(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("image is empty")
	case len(name) > maxImageLen:
		return fmt.Errorf("image is %d characters; the limit is %d", len(name), maxImageLen)
	case !imageRE.MatchString(name):
		return fmt.Errorf("invalid image reference %q", name)
	}
	return nil
}

// runtime parses the runtime keys of a step into st.Runtime (nil when the
// step has none of them).
func (p *parser) runtime(st *Step, f map[string]yamlpos.Field) {
	rt := &kilnv1.StepRuntime{}
	set := false
	var imageKey *yaml.Node
	if x, ok := f["image"]; ok {
		set = true
		imageKey = x.Key
		if s, ok := p.str(x.Val, "image"); ok {
			if err := CheckImage(s); err != nil {
				p.errorf(x.Val, "name an image the agents' Docker engine has or can pull, e.g. alpine:3.20", "%v", err)
			} else {
				rt.Image = s
			}
		}
	}
	needImage := func(key string, x yamlpos.Field) {
		if imageKey == nil {
			p.errorf(x.Key, "add image: NAME to run the step in a container", "%s applies to container steps only", key)
		}
	}
	if x, ok := f["pull"]; ok {
		set = true
		needImage("pull", x)
		if s, ok := p.str(x.Val, "pull"); ok {
			if !contains(PullPolicies, s) {
				p.errorf(x.Val, "use "+strings.Join(PullPolicies, ", "), "invalid pull policy %q", s)
			} else {
				rt.Pull = s
			}
		}
	}
	if x, ok := f["cpus"]; ok {
		set = true
		needImage("cpus", x)
		if s, ok := p.str(x.Val, "cpus"); ok {
			v, err := strconv.ParseFloat(s, 64)
			switch {
			case err != nil || math.IsNaN(v) || math.IsInf(v, 0):
				p.errorf(x.Val, "write a number of CPUs such as 1 or 0.5", "cpus must be a number, not %q", s)
			case v < 0.01 || v > MaxCPUs:
				p.errorf(x.Val, "", "cpus is %s; it must be between 0.01 and %d", s, MaxCPUs)
			default:
				rt.NanoCpus = int64(math.Round(v * 1e9))
			}
		}
	}
	if x, ok := f["memory"]; ok {
		set = true
		needImage("memory", x)
		if s, ok := p.str(x.Val, "memory"); ok {
			n, err := ParseMemory(s)
			if err != nil {
				p.errorf(x.Val, "write bytes or a size such as 512m or 2g", "%v", err)
			} else {
				rt.MemoryBytes = n
			}
		}
	}
	if x, ok := f["network"]; ok {
		set = true
		if s, ok := p.str(x.Val, "network"); ok {
			if !contains(Networks, s) {
				p.errorf(x.Val, "use "+strings.Join(Networks, " or "), "invalid network %q", s)
			} else {
				rt.Network = s
			}
		}
	}
	if x, ok := f["user"]; ok {
		set = true
		needImage("user", x)
		if s, ok := p.str(x.Val, "user"); ok {
			if len(s) > 64 || !userRE.MatchString(s) {
				p.errorf(x.Val, "use a user name or uid, optionally :group or :gid", "invalid user %q", s)
			} else {
				rt.User = s
			}
		}
	}
	if x, ok := f["services"]; ok {
		set = true
		needImage("services", x)
		rt.Services = p.services(x.Key, x.Val)
	}
	if x, ok := f["services"]; ok && rt.GetNetwork() == "none" {
		p.errorf(x.Key, "remove network: none, or the services", "services need a network; the step sets network: none")
	}
	if set {
		st.Runtime = rt
	}
}

// services parses a step's services: list.
func (p *parser) services(key, n *yaml.Node) []*kilnv1.ServiceSpec {
	if !p.isKind(n, yaml.SequenceNode, "services", false) {
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(key, "add a service or remove the key", "services is empty")
		return nil
	}
	if len(n.Content) > MaxServices {
		p.errorf(key, "", "a step has %d services; the limit is %d", len(n.Content), MaxServices)
		return nil
	}
	var out []*kilnv1.ServiceSpec
	seen := map[string]*yaml.Node{}
	for _, e := range n.Content {
		f := p.fields(e, "service", serviceKeys)
		if f == nil {
			continue
		}
		svc := &kilnv1.ServiceSpec{}
		ok := true
		if x, has := f["name"]; has {
			if s, good := p.str(x.Val, "service name"); good {
				switch {
				case !serviceRE.MatchString(s):
					p.errorf(x.Val, "use lower-case letters, digits and '-' (a host name)", "invalid service name %q", s)
					ok = false
				case s == "workspace":
					p.errorf(x.Val, "pick another name", "service name %q is reserved", s)
					ok = false
				default:
					if first, dup := seen[s]; dup {
						p.errorf(x.Val, "", "duplicate service name %q (first at line %d)", s, first.Line)
						ok = false
					}
					seen[s] = x.Val
					svc.Name = s
				}
			} else {
				ok = false
			}
		} else {
			p.errorf(e, "add name: HOST, e.g. name: db", "service has no name")
			ok = false
		}
		if x, has := f["image"]; has {
			if s, good := p.str(x.Val, "service image"); good {
				if err := CheckImage(s); err != nil {
					p.errorf(x.Val, "", "service image: %v", err)
					ok = false
				}
				svc.Image = s
			} else {
				ok = false
			}
		} else {
			p.errorf(e, "add image: NAME", "service has no image")
			ok = false
		}
		if x, has := f["env"]; has {
			svc.Env = p.env(x.Val, "service env")
		}
		if x, has := f["command"]; has {
			if p.isKind(x.Val, yaml.SequenceNode, "service command", false) {
				for _, a := range x.Val.Content {
					if s, good := p.str(a, "service command entry"); good {
						svc.Command = append(svc.Command, s)
					}
				}
				if len(svc.Command) == 0 {
					p.errorf(x.Key, "give the argv, e.g. [redis-server, --port, \"6380\"], or remove the key", "service command is empty")
				}
			}
		}
		if ok {
			out = append(out, svc)
		}
	}
	return out
}

// ParseMemory parses a memory size: bytes, or a number with a binary
// suffix k, m, g or t (optionally followed by b or ib), as Docker does.
func ParseMemory(s string) (int64, error) {
	m := memoryRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("invalid memory size %q", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid memory size %q: %w", s, err)
	}
	shift := map[string]uint{"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[strings.ToLower(m[2])]
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("memory size %q is too large", s)
	}
	n <<= shift
	if n < MinMemory {
		return 0, fmt.Errorf("memory size %q is below the minimum of 6m", s)
	}
	return n, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ImplyLabels adds the agent labels a step's runtime requires, so that the
// scheduler never assigns it to an agent that cannot run it and the job's
// required labels say why it waits: docker=true for a step with an image,
// sandbox=true for a shell step with network: none (only a sandboxed agent
// can take the network away from it).
func ImplyLabels(steps []*kilnv1.StepSpec) {
	for _, s := range steps {
		rt := s.GetRuntime()
		var k string
		switch {
		case rt.GetImage() != "":
			k = DockerLabel
		case rt.GetNetwork() == "none" && s.GetApproval() == nil:
			k = SandboxLabel
		default:
			continue
		}
		if s.Agents == nil {
			s.Agents = map[string]string{}
		}
		s.Agents[k] = "true"
	}
}

// ApplyImage sets image on every command step that names none (kilnctl
// run --image, e.g. for a CodeBuild buildspec), then adds the implied
// labels (ImplyLabels).
func ApplyImage(steps []*kilnv1.StepSpec, image string) {
	for _, s := range steps {
		if image == "" || s.GetApproval() != nil || (len(s.GetCommands()) == 0 && s.GetBuildspec() == "") || s.GetRuntime().GetImage() != "" {
			continue
		}
		if s.Runtime == nil {
			s.Runtime = &kilnv1.StepRuntime{}
		}
		s.Runtime.Image = image
	}
	ImplyLabels(steps)
}

// buildspecPath parses a step's buildspec: a relative path in the
// workspace, without '..' components.
func (p *parser) buildspecPath(n *yaml.Node) string {
	s, ok := p.str(n, "buildspec")
	if !ok {
		return ""
	}
	const rel = "the path is relative to the workspace (the checked-out source), e.g. buildspec.yml"
	switch {
	case strings.TrimSpace(s) == "":
		p.errorf(n, rel, "buildspec path is empty")
	case strings.HasPrefix(s, "/") || strings.HasPrefix(s, "\\") || driveRE.MatchString(s):
		p.errorf(n, rel, "buildspec path %q is absolute", s)
	case contains(strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == '\\' }), ".."):
		p.errorf(n, rel, "buildspec path %q has a '..' component", s)
	case len(s) > 1024:
		p.errorf(n, "", "buildspec path is %d bytes; the limit is 1024", len(s))
	default:
		return s
	}
	return ""
}
