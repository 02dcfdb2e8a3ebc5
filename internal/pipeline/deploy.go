package pipeline

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/kiln-ci/kiln/internal/yamlpos"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Deploy strategies.
const (
	StrategyAllAtOnce = "all_at_once"
	StrategyRolling   = "rolling"
	StrategyCanary    = "canary"
	StrategyBlueGreen = "blue_green"
)

// Strategies lists the deploy strategies.
var Strategies = []string{StrategyAllAtOnce, StrategyRolling, StrategyCanary, StrategyBlueGreen}

// MaxDeployCommands bounds each command list of a deploy: block.
const MaxDeployCommands = 100

var (
	deployKeys    = []string{"environment", "strategy", "batch", "verify", "commands", "health", "rollback", "blue_green"}
	blueGreenKeys = []string{"blue", "green", "switch"}
	// deployStepKeys are the step keys that apply to a deploy step.
	deployStepKeys = []string{"key", "name", "needs", "if", "env", "timeout", "artifacts", "deploy"}
)

// Deploy is a step's deploy: block as written.
type Deploy struct {
	// Environment names the targets: agents labelled env=Environment.
	Environment string
	// Strategy is one of Strategies (default rolling).
	Strategy string
	// Batch is the hosts per batch; BatchPercent, when set, a percentage
	// of the targets instead. Both 0: one host.
	Batch, BatchPercent int32
	// Verify is the canary/blue_green wait before health runs again.
	Verify   time.Duration
	Commands []string
	Health   []string
	Rollback []string
	// BlueGreen is set for the blue_green strategy.
	BlueGreen *BlueGreen
}

// BlueGreen names the two host groups of a blue_green deploy.
type BlueGreen struct {
	Blue, Green map[string]string
	Switch      []string
}

// deployStep parses a step that has deploy:, reporting keys that do not
// apply to it.
func (p *parser) deployStep(st *Step, f map[string]yamlpos.Field) {
	x := f["deploy"]
	st.Deploy = p.deploy(x.Key, x.Val)
	for _, k := range stepKeys {
		y, set := f[k]
		if !set || slices.Contains(deployStepKeys, k) || k == "approval" {
			continue
		}
		hint := "remove it"
		switch k {
		case "command", "commands":
			hint = "put them in deploy.commands (run on every target)"
		case "agents":
			hint = "the targets are the agents labelled env=<deploy.environment>"
		}
		p.errorf(y.Key, hint, "%s does not apply to a deploy step", k)
	}
	if y, ok := f["env"]; ok {
		st.Env = p.env(y.Val, "env")
	}
	if y, ok := f["timeout"]; ok {
		st.Timeout = p.duration(y.Val, "timeout")
	}
	if y, ok := f["artifacts"]; ok {
		st.Artifacts, st.ArtifactsFrom = p.artifacts(y.Key, y.Val)
		if len(st.Artifacts) > 0 {
			p.errorf(y.Key, "a deploy step downloads artifacts: use artifacts: {from: STEP, paths: [...]}", "a deploy step keeps no artifacts")
			st.Artifacts = nil
		}
	}
	if st.Deploy == nil {
		st.Deploy = &Deploy{}
	}
	p.stepCommon(st, f)
}

func (p *parser) deploy(key, n *yaml.Node) *Deploy {
	f := p.fields(n, "deploy", deployKeys)
	if f == nil {
		return nil
	}
	d := &Deploy{Strategy: StrategyRolling}
	if x, ok := f["environment"]; ok {
		if s, ok := p.str(x.Val, "deploy.environment"); ok {
			switch {
			case strings.TrimSpace(s) == "":
				p.errorf(x.Val, "name the environment, e.g. staging", "deploy.environment is empty")
			case len(s) > maxNameLen:
				p.errorf(x.Val, "", "deploy.environment is %d characters; the limit is %d", len(s), maxNameLen)
			case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) || r == '=' || r == ',' }):
				p.errorf(x.Val, "use letters, digits, '-', '_' or '.'", "deploy.environment %q contains spaces, control characters, '=' or ','", s)
			default:
				d.Environment = s
			}
		}
	} else {
		p.errorf(key, "add environment: NAME (targets: agents labelled env=NAME)", "deploy has no environment")
	}
	if x, ok := f["strategy"]; ok {
		if s, ok := p.str(x.Val, "deploy.strategy"); ok {
			if !slices.Contains(Strategies, s) {
				p.errorf(x.Val, "use "+strings.Join(Strategies, ", "), "unknown deploy.strategy %q", s)
			} else {
				d.Strategy = s
			}
		}
	}
	if x, ok := f["batch"]; ok {
		p.batch(d, x.Val)
	}
	if x, ok := f["verify"]; ok {
		d.Verify = p.duration(x.Val, "deploy.verify")
		if d.Strategy != StrategyCanary && d.Strategy != StrategyBlueGreen {
			p.errorf(x.Key, "remove it, or use strategy: canary or blue_green", "deploy.verify applies to the canary and blue_green strategies only")
		}
	}
	if x, ok := f["commands"]; ok {
		d.Commands = p.deployCommands(x.Key, x.Val, "deploy.commands")
	} else {
		p.errorf(key, `add commands: ["..."] (run on every target)`, "deploy has no commands")
	}
	if x, ok := f["health"]; ok {
		d.Health = p.deployCommands(x.Key, x.Val, "deploy.health")
	}
	if x, ok := f["rollback"]; ok {
		d.Rollback = p.deployCommands(x.Key, x.Val, "deploy.rollback")
	}
	x, hasBG := f["blue_green"]
	switch {
	case hasBG && d.Strategy != StrategyBlueGreen:
		p.errorf(x.Key, "use strategy: blue_green, or remove it", "deploy.blue_green applies to the blue_green strategy only")
	case hasBG:
		d.BlueGreen = p.blueGreen(x.Key, x.Val)
	case d.Strategy == StrategyBlueGreen:
		p.errorf(key, "add blue_green: {blue: env=blue, green: env=green, switch: [...]}", "strategy blue_green needs deploy.blue_green")
	}
	return d
}

// batch reads deploy.batch: a positive integer or a percentage "N%".
func (p *parser) batch(d *Deploy, n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && strings.HasSuffix(n.Value, "%") {
		v, err := strconv.Atoi(strings.TrimSuffix(n.Value, "%"))
		if err != nil || v < 1 || v > 100 {
			p.errorf(n, "use a percentage from 1% to 100%", "deploy.batch %q is not a percentage from 1%% to 100%%", n.Value)
			return
		}
		d.BatchPercent = int32(v)
		return
	}
	if v := p.count(n, "deploy.batch", 1, 10000); v != nil {
		d.Batch = *v
	}
}

func (p *parser) deployCommands(key, n *yaml.Node, what string) []string {
	if n.Kind == yaml.ScalarNode && !yamlpos.IsNull(n) {
		p.errorf(n, `write `+what[strings.Index(what, ".")+1:]+`: ["..."]`, "%s must be a list, not %s", what, yamlpos.KindName(n))
		return nil
	}
	cmds := p.commands(key, n)
	if len(cmds) > MaxDeployCommands {
		p.errorf(key, "", "%s has %d commands; the limit is %d", what, len(cmds), MaxDeployCommands)
		return nil
	}
	return cmds
}

func (p *parser) blueGreen(key, n *yaml.Node) *BlueGreen {
	f := p.fields(n, "deploy.blue_green", blueGreenKeys)
	if f == nil {
		return nil
	}
	bg := &BlueGreen{}
	sel := func(color string) map[string]string {
		x, ok := f[color]
		if !ok {
			p.errorf(key, fmt.Sprintf("add %s: env=%s", color, color), "deploy.blue_green has no %s", color)
			return nil
		}
		s, ok := p.str(x.Val, "deploy.blue_green."+color)
		if !ok {
			return nil
		}
		out := map[string]string{}
		for _, kv := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || strings.TrimSpace(k) == "" {
				p.errorf(x.Val, "write label=value[,label=value], e.g. env=blue", "deploy.blue_green.%s: %q is not label=value", color, kv)
				return nil
			}
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
		return out
	}
	bg.Blue, bg.Green = sel("blue"), sel("green")
	if x, ok := f["switch"]; ok {
		bg.Switch = p.deployCommands(x.Key, x.Val, "deploy.blue_green.switch")
	}
	return bg
}

// deploySpec is the wire form of d.
func deploySpec(d *Deploy) *kilnv1.DeploySpec {
	ds := &kilnv1.DeploySpec{
		Environment:  d.Environment,
		Strategy:     d.Strategy,
		Batch:        d.Batch,
		BatchPercent: d.BatchPercent,
		VerifyMs:     d.Verify.Milliseconds(),
		Commands:     slices.Clone(d.Commands),
		Health:       slices.Clone(d.Health),
		Rollback:     slices.Clone(d.Rollback),
	}
	if ds.Strategy == "" {
		ds.Strategy = StrategyRolling
	}
	if bg := d.BlueGreen; bg != nil {
		ds.BlueGreen = &kilnv1.BlueGreenSpec{Blue: bg.Blue, Green: bg.Green, Switch: slices.Clone(bg.Switch)}
	}
	return ds
}
