// Command e2e is Kiln's end-to-end benchmark: it starts the real binaries
// (3 kiln-coordinator processes on loopback, kiln-agent processes, or light
// agents in this process for the dispatch and scale runs), drives them over
// gRPC, and prints what a user gets. Given two binary directories
// (-bin before=DIR,after=DIR) it runs every scenario against both, one
// after the other, and prints each figure with the ratio after/before, so
// the two sides share the machine's state of the moment.
//
//	go build -o /tmp/kiln-bin ./cmd/... && go run ./bench/e2e -bin after=/tmp/kiln-bin
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// options are the sizes of the scenarios.
type options struct {
	dispatchJobs int
	latencyJobs  int
	realAgents   int
	realSlots    int
	logMB        int
	artifactMB   int
	logJobs      int
	logLines     int
	failovers    int
	scaleAgents  int
	scaleJobs    int
	scaleRamp    int
}

// metric is one figure of a scenario.
type metric struct {
	name   string
	value  float64
	unit   string
	better string // "higher" or "lower"
	note   string
}

type scenario struct {
	name string
	run  func(ctx context.Context, bin, dir string, o options) ([]metric, error)
}

var scenarios = []scenario{
	{"dispatch-light", runDispatchLight},
	{"dispatch-real", runDispatchReal},
	{"logs-big", runLogBig},
	{"logs-lines", runLogLines},
	{"artifact", runArtifact},
	{"failover", runFailover},
	{"scale", runScale},
}

func main() {
	var (
		bins, only string
		o          options
		timeout    time.Duration
	)
	flag.StringVar(&bins, "bin", "", "binary directories: name=DIR[,name=DIR] (each holds kiln-coordinator and kiln-agent); the last is compared with the first")
	flag.StringVar(&only, "run", "", "comma-separated scenarios (default all): "+names())
	flag.IntVar(&o.dispatchJobs, "dispatch-jobs", 3000, "trivial jobs of the dispatch runs")
	flag.IntVar(&o.latencyJobs, "latency-jobs", 200, "sequential jobs of the latency runs")
	flag.IntVar(&o.realAgents, "real-agents", 4, "kiln-agent processes of dispatch-real")
	flag.IntVar(&o.realSlots, "real-slots", 8, "slots of each kiln-agent")
	flag.IntVar(&o.logMB, "log-mb", 1024, "size of the one big log (MiB)")
	flag.IntVar(&o.artifactMB, "artifact-mb", 1024, "size of the uploaded artifact (MiB)")
	flag.IntVar(&o.logJobs, "log-jobs", 10, "concurrent jobs of logs-lines")
	flag.IntVar(&o.logLines, "log-lines", 1000000, "lines each job of logs-lines prints")
	flag.IntVar(&o.failovers, "failovers", 2, "leader kills (one fresh cluster each)")
	flag.IntVar(&o.scaleAgents, "scale-agents", 10000, "light agents of the scale run")
	flag.IntVar(&o.scaleJobs, "scale-jobs", 2000, "trivial jobs dispatched with the scale run's agents connected")
	flag.IntVar(&o.scaleRamp, "scale-ramp", 500, "light agents started per second in the scale run (0: all at once)")
	flag.DurationVar(&timeout, "timeout", 30*time.Minute, "bound of the whole run")
	flag.Parse()
	if err := run(bins, only, o, timeout); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
}

func names() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	return strings.Join(n, ",")
}

type side struct{ name, dir string }

func run(bins, only string, o options, timeout time.Duration) error {
	var sides []side
	for _, b := range strings.Split(bins, ",") {
		name, dir, ok := strings.Cut(b, "=")
		if !ok || name == "" || dir == "" {
			return fmt.Errorf("-bin %q: want name=DIR[,name=DIR]", bins)
		}
		for _, exe := range []string{"kiln-coordinator", "kiln-agent"} {
			if _, err := os.Stat(filepath.Join(dir, exe)); err != nil {
				return fmt.Errorf("-bin %s: %w", name, err)
			}
		}
		sides = append(sides, side{name, dir})
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	for n := range want {
		if !strings.Contains(","+names()+",", ","+n+",") {
			return fmt.Errorf("-run: unknown scenario %q (have %s)", n, names())
		}
	}
	// An interrupt ends the run through ctx, so every process is stopped.
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithTimeout(sigCtx, timeout)
	defer cancel()
	work, err := os.MkdirTemp("", "kiln-e2e-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	type row struct {
		scenario string
		m        metric
		values   []float64
	}
	var rows []row
	var failed []string
	for _, sc := range scenarios {
		if len(want) > 0 && !want[sc.name] {
			continue
		}
		byName := map[string]int{}
		for si, sd := range sides {
			dir := filepath.Join(work, sc.name+"-"+sd.name)
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "e2e: %s on %s ...\n", sc.name, sd.name)
			t0 := time.Now()
			ms, err := sc.run(ctx, sd.dir, dir, o)
			if err != nil {
				// A side that cannot do a scenario is a result too: the
				// table says so, and the other scenarios still run.
				fmt.Fprintf(os.Stderr, "e2e: %s on %s failed: %v\n", sc.name, sd.name, err)
				if tail := logTail(dir); tail != "" {
					fmt.Fprintf(os.Stderr, "%s\n", tail)
				}
				failed = append(failed, fmt.Sprintf("%s on %s: %v", sc.name, sd.name, err))
				// What was measured before the failure is kept.
				ms = append(ms, metric{name: "(failed)", value: math.NaN(), unit: "-", better: "-"})
				if ctx.Err() != nil {
					return fmt.Errorf("%s on %s: %w", sc.name, sd.name, err)
				}
			}
			fmt.Fprintf(os.Stderr, "e2e: %s on %s took %s\n", sc.name, sd.name, time.Since(t0).Round(time.Second))
			for _, m := range ms {
				fmt.Fprintf(os.Stderr, "  %-28s %12.2f %s %s\n", m.name, m.value, m.unit, m.note)
				i, ok := byName[m.name]
				if !ok {
					i = len(rows)
					byName[m.name] = i
					vals := make([]float64, len(sides))
					for k := range vals {
						vals[k] = math.NaN() // until measured
					}
					rows = append(rows, row{scenario: sc.name, m: m, values: vals})
				}
				rows[i].values[si] = m.value
				if m.note != "" {
					rows[i].m.note = m.note
				}
			}
			_ = os.RemoveAll(dir) // data dirs of a big log are large
		}
	}
	// The table, markdown.
	head := "| scenario | figure |"
	sep := "|---|---|"
	for _, sd := range sides {
		head += " " + sd.name + " |"
		sep += "---|"
	}
	if len(sides) > 1 {
		head += " " + sides[len(sides)-1].name + "/" + sides[0].name + " |"
		sep += "---|"
	}
	fmt.Println(head)
	fmt.Println(sep)
	for _, r := range rows {
		line := fmt.Sprintf("| %s | %s (%s, %s is better) |", r.scenario, r.m.name, r.m.unit, r.m.better)
		for _, v := range r.values {
			line += " " + format(v) + " |"
		}
		if len(sides) > 1 {
			first, last := r.values[0], r.values[len(r.values)-1]
			if first != 0 && !math.IsNaN(first) && !math.IsNaN(last) {
				line += fmt.Sprintf(" %.2f× |", last/first)
			} else {
				line += " – |"
			}
		}
		fmt.Println(line)
	}
	for _, f := range failed {
		fmt.Printf("\nfailed: %s\n", f)
	}
	return nil
}

// logTail is the end of the first coordinator log of a scenario's
// directory that has one, for a failed run.
func logTail(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "coordinator-1.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	return "  coordinator-1.log ends: " + strings.TrimSpace(string(b[max(0, len(b)-600):]))
}

func format(v float64) string {
	switch {
	case math.IsNaN(v):
		return "failed"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
