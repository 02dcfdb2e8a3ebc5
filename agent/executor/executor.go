// Package executor runs one attempt of a job on the agent's host.
//
// Each attempt runs in its own fresh workspace, <work dir>/<sanitized job
// id>-a<attempt>. The directory is removed and recreated when the attempt
// starts and is left in place afterwards so that people can inspect what a
// job left behind; the next attempt of the same job (or a rerun of the same
// attempt number) starts from an empty directory again.
//
// The commands are joined with newlines and run as one script by
// `bash -e -c` (or `/bin/sh -e -c` when bash is missing), so the script stops
// at the first failing command. The script runs in its own process group;
// timeouts and cancellation signal the whole group (SIGTERM, then SIGKILL
// after the kill grace). When the script's shell exits, whatever is left of
// its process group (background children) is killed too.
//
// Standard output and standard error share one pipe, so the output keeps the
// order in which the processes wrote it.
//
// When the Spec has a git source (URL and commit), the commit is fetched and
// checked out into the workspace (internal/gitsrc) before the script starts;
// when it has an uploaded archive (archive_sha256), the archive is
// downloaded with Spec.Fetch into a file next to the workspace, its size
// and SHA-256 are verified, and it is unpacked with internal/archive.Unpack
// (no path traversal, no symlink escapes, size and entry limits); failures
// end the attempt FAILED "source download failed: ..." or "unpack
// failed: ...";
// git's output goes to the attempt's output. The checkout counts against the
// attempt's timeout and is stopped by Cancel; a failed checkout ends the
// attempt FAILED with the reason "checkout failed: ..." and the script never
// runs.
//
// Artifacts (artifacts.go): Spec.Inputs are downloaded with Fetch into the
// workspace at their paths after the source and before the script
// (relative clean paths only, nothing written through a symbolic link, all
// inside an os.Root of the workspace, size and SHA-256 verified, set-id and
// sticky bits dropped); a failure ends the attempt FAILED "artifact download
// failed: ...". After a script that ended PASSED or FAILED (not TIMED_OUT or
// CANCELED), the regular files matching Spec.Artifacts (see Glob) are
// uploaded with Spec.Upload, one log line each; symbolic links are skipped
// with a line, a pattern matching nothing gets a warning line; at most
// 10 000 files of at most 5 GiB each. An upload failure turns PASSED into
// FAILED "artifact upload failed: ...". The uploads do not count against
// the timeout; Cancel and Kill stop them.
//
// Runners (runner.go): the script runs as a host process group (the shell
// executor), the same under bubblewrap when the Executor has a Sandbox
// (sandbox.go), or, for a Spec whose Runtime names an image, in a Docker
// container with the workspace mounted at /workspace (docker.go; its setup
// — pull, services, container creation — is the last preparation step and
// counts against the timeout). A Spec with a Buildspec reads that file from
// the workspace after the source and inputs and runs its script
// (buildspec.go). Output, timeout, cancel and everything below are the same
// for every runner.
//
// Test reports (junit.go): after the artifacts, the files matching
// Spec.JUnit (same glob rules) are parsed with internal/junit into
// Outcome.Tests, one log line each ("kiln: test report FILE: N tests, ...",
// or "...: parse error: ..."); a report never changes the result.
package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kiln-ci/kiln/internal/archive"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Defaults used when the matching Executor field is zero.
const (
	DefaultTimeout   = time.Hour
	DefaultKillGrace = 5 * time.Second
	DefaultPipeIdle  = 2 * time.Second
	readBufferSize   = 32 << 10
)

// Executor starts job attempts. The zero value is not usable: WorkDir must
// be set. An Executor may start many attempts concurrently.
type Executor struct {
	// WorkDir is the parent directory of every attempt's workspace.
	WorkDir string
	// DefaultTimeout applies when a Spec has no timeout (DefaultTimeout when zero).
	DefaultTimeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL to the process group
	// on timeout or cancellation (DefaultKillGrace when zero).
	KillGrace time.Duration
	// PipeIdle bounds how long the executor keeps waiting for the output pipe
	// to close once the process group has been killed and the pipe has gone
	// quiet: a process that left the group (setsid) could otherwise hold the
	// pipe open forever (DefaultPipeIdle when zero).
	PipeIdle time.Duration
	// Env is the base environment of the commands; nil means the part of
	// os.Environ() that DefaultPassEnv allows (see BaseEnv).
	Env []string
	// Shell overrides the interpreter (argv before the script); nil picks
	// bash -e -c, or /bin/sh -e -c when bash is not installed.
	Shell []string
	// Name is the agent's name: containers carry it in a label so that a
	// restarted agent finds its orphans (docker.go).
	Name string
	// Docker runs steps that name an image; nil means this agent has no
	// Docker engine and such steps fail to start.
	Docker *Docker
	// Sandbox, when set, runs shell steps under bubblewrap (sandbox.go).
	Sandbox *Sandbox
}

// Spec describes one attempt to run.
type Spec struct {
	JobID    string
	BuildID  string
	Attempt  uint32
	Commands []string
	// Env is added to the executor's base environment.
	Env map[string]string
	// Timeout for the whole script; zero means the executor's default.
	Timeout time.Duration
	// Source, when it has a git URL and a commit, is checked out into the
	// workspace before the commands run; when it has an archive digest, the
	// archive is downloaded with Fetch, verified and unpacked there.
	Source *kilnv1.Source
	// Fetch writes the blob with the given SHA-256 to w (the agent
	// downloads it from its coordinator). Needed for archive sources.
	Fetch func(ctx context.Context, sha string, w io.Writer) error
	// Unpack bounds the unpacked archive (archive defaults when zero).
	Unpack archive.Limits
	// Inputs are artifacts of earlier steps, downloaded with Fetch into the
	// workspace at their paths after the source and before the commands.
	Inputs []*kilnv1.Artifact
	// Artifacts are the step's artifact patterns (see Glob). After the
	// commands ended PASSED or FAILED, the matching files are uploaded
	// with Upload and listed in Outcome.Artifacts.
	Artifacts []string
	// Upload stores one artifact file (the agent uploads it to the leader).
	Upload UploadFunc
	// ArtifactLimits bound the collected artifacts (defaults when zero).
	ArtifactLimits ArtifactLimits
	// JUnit are the step's JUnit report patterns (see Glob). After the
	// commands ended PASSED or FAILED (and after the artifacts), the
	// matching files are parsed into Outcome.Tests. Reports never change
	// the result.
	JUnit []string
	// TestLimits bound the parsed reports (defaults when zero).
	TestLimits TestLimits
	// Buildspec is the workspace path of a CodeBuild buildspec to run
	// instead of Commands (buildspec.go).
	Buildspec string
	// Runtime is where the commands run: a container image (with limits,
	// network and services) or, without an image, the shell executor
	// (network: none needs the Sandbox). Nil means the shell executor.
	Runtime *kilnv1.StepRuntime
}

// Outcome is how an attempt ended.
type Outcome struct {
	Result   kilnv1.JobResult
	ExitCode int32
	// Reason explains results other than PASSED.
	Reason string
	// Artifacts are the files uploaded after the commands, in path order.
	Artifacts []*kilnv1.ArtifactFile
	// Tests are the parsed JUnit reports, in path order (a file that could
	// not be parsed has Error set).
	Tests []*kilnv1.TestReport
}

// Process is a running attempt.
type Process struct {
	rn        runner
	workspace string
	grace     time.Duration
	pipeIdle  time.Duration

	cancelOnce sync.Once
	cancelCh   chan struct{}
	mu         sync.Mutex
	cancelWhy  string
	hardKill   chan struct{}
	hardOnce   sync.Once

	done    chan struct{}
	outcome Outcome

	spec Spec // artifact patterns and upload
}

// Workspace returns the sanitized directory name of an attempt's workspace
// below the work dir: <job id with unsafe characters replaced>-a<attempt>.
func Workspace(jobID string, attempt uint32) string {
	var b strings.Builder
	for _, r := range jobID {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) > 200 {
		name = name[:200]
	}
	if name == "" || strings.HasPrefix(name, ".") {
		name = "_" + name
	}
	return name + "-a" + strconv.FormatUint(uint64(attempt), 10)
}

// Start prepares the attempt's workspace and starts its commands. Output
// (stdout and stderr merged, in order) is written to out by a single
// goroutine; out may block to apply backpressure. If out returns an error,
// the remaining output is read and discarded. The caller must call Wait.
func (e *Executor) Start(spec Spec, out io.Writer) (*Process, error) {
	if e.WorkDir == "" {
		return nil, errors.New("executor: WorkDir is empty")
	}
	ws, err := filepath.Abs(filepath.Join(e.WorkDir, Workspace(spec.JobID, spec.Attempt)))
	if err != nil {
		return nil, fmt.Errorf("executor: workspace path: %w", err)
	}
	if err := os.RemoveAll(ws); err != nil {
		return nil, fmt.Errorf("executor: clean workspace %s: %w", ws, err)
	}
	if err := os.MkdirAll(ws, 0o755); err != nil {
		return nil, fmt.Errorf("executor: create workspace %s: %w", ws, err)
	}

	env := e.baseEnv()
	rt := spec.Runtime
	if e.Sandbox != nil && rt.GetImage() == "" {
		// The sandbox has its own HOME and TMPDIR; the agent's allow-listed
		// variables (and --pass-env ones) follow, the rest of its
		// environment never enters.
		env = append(sandboxEnv(), withoutVars(env, "PATH", "HOME", "TMPDIR")...)
	}
	env = append([]string(nil), env...)
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	env = append(env,
		"KILN_BUILD_ID="+spec.BuildID,
		"KILN_JOB_ID="+spec.JobID,
		"KILN_ATTEMPT="+strconv.FormatUint(uint64(spec.Attempt), 10),
		"KILN_WORKSPACE="+ws,
	)

	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = e.DefaultTimeout
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	p := &Process{
		workspace: ws,
		grace:     orDefault(e.KillGrace, DefaultKillGrace),
		pipeIdle:  orDefault(e.PipeIdle, DefaultPipeIdle),
		cancelCh:  make(chan struct{}),
		hardKill:  make(chan struct{}),
		done:      make(chan struct{}),
		spec:      spec,
	}
	script := strings.Join(spec.Commands, "\n")
	var setup *prepStep
	switch {
	case rt.GetImage() != "":
		if e.Docker == nil {
			return nil, fmt.Errorf("executor: the step runs in image %q and this agent has no Docker engine", rt.GetImage())
		}
		dr := &dockerRunner{d: e.Docker, agent: e.Name, workDir: e.WorkDir, ws: ws, spec: spec, script: script}
		p.rn = dr
		setup = &prepStep{"the container setup", func(ctx context.Context) (string, error) {
			return "container setup failed", dr.create(ctx, out)
		}}
	default:
		shell := e.Shell
		if shell == nil {
			if p, err := exec.LookPath("bash"); err == nil {
				shell = []string{p, "-e", "-c"}
			} else {
				shell = []string{"/bin/sh", "-e", "-c"}
			}
		}
		argv := append([]string(nil), shell...)
		if e.Sandbox != nil {
			argv = e.Sandbox.wrap(ws, rt.GetNetwork() == "none", argv)
		} else if rt.GetNetwork() == "none" {
			return nil, errors.New("executor: network: none needs an image or a sandboxed agent (kiln-agent --sandbox); this agent cannot take the network away from a shell step")
		}
		p.rn = &shellRunner{argv: argv, script: script, env: env, dir: ws}
	}
	var steps []prepStep
	if src := spec.Source; src.GetArchiveSha256() != "" {
		steps = append(steps, prepStep{"the source download", func(ctx context.Context) (string, error) {
			return fetchArchive(ctx, e.WorkDir, ws, src, spec, out)
		}})
	} else if src.GetGitUrl() != "" && src.GetCommit() != "" {
		steps = append(steps, prepStep{"the checkout", func(ctx context.Context) (string, error) {
			return "checkout failed", gitsrc.CheckoutTo(ctx, p.workspace, src.GetGitUrl(), src.GetCommit(), out)
		}})
	}
	if len(spec.Inputs) > 0 {
		steps = append(steps, prepStep{"the artifact download", func(ctx context.Context) (string, error) {
			return "artifact download failed", downloadInputs(ctx, ws, spec.Inputs, spec.Fetch, out)
		}})
	}
	if spec.Buildspec != "" {
		steps = append(steps, prepStep{"the buildspec", func(ctx context.Context) (string, error) {
			return "buildspec failed", p.loadBuildspec(out)
		}})
	}
	if setup != nil {
		steps = append(steps, *setup)
	}
	if len(steps) > 0 {
		go p.prepareAndRun(steps, out, timeout)
		return p, nil
	}
	r, err := p.startRunner()
	if err != nil {
		return nil, err
	}
	go p.run(r, out, timeout, timeout)
	return p, nil
}

// startRunner starts the script with its output pipe and returns the
// read end. On failure the runner's resources are released.
func (p *Process) startRunner() (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		p.rn.cleanup()
		return nil, fmt.Errorf("executor: output pipe: %w", err)
	}
	if err := p.rn.start(w); err != nil { // start closes w
		r.Close()
		p.rn.cleanup()
		return nil, err
	}
	return r, nil
}

// prepStep is one preparation of the workspace before the commands.
type prepStep struct {
	// phase names the step in a timeout reason ("the checkout").
	phase string
	// run returns the reason prefix of its failure ("checkout failed").
	run func(ctx context.Context) (string, error)
}

// prepareAndRun prepares the workspace (the source: a git checkout or an
// archive download; then the input artifacts), then runs the script with
// what is left of the timeout. Cancel and the timeout stop the preparation
// too.
func (p *Process) prepareAndRun(steps []prepStep, out io.Writer, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	dctx, cancelDeadline := context.WithDeadline(context.Background(), deadline)
	ctx, release := p.untilCanceled(dctx)
	var what, phase string
	var err error
	for _, st := range steps {
		phase = st.phase
		if what, err = st.run(ctx); err != nil {
			break
		}
	}
	ctxErr := ctx.Err()
	release()
	cancelDeadline()
	if err == nil && p.canceled() {
		err = context.Canceled // canceled right after the checkout
	}
	if err != nil {
		switch {
		case p.canceled():
			p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_CANCELED, ExitCode: -1, Reason: p.cancelReason()}
		case errors.Is(ctxErr, context.DeadlineExceeded):
			p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_TIMED_OUT, ExitCode: -1,
				Reason: "timed out after " + timeout.String() + " (during " + phase + ")"}
		default:
			p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: -1, Reason: what + ": " + err.Error()}
			fmt.Fprintf(out, "kiln: %s: %v\n", what, err)
		}
		p.rn.cleanup()
		close(p.done)
		return
	}
	r, err := p.startRunner()
	if err != nil {
		p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: -1, Reason: "agent could not start the job: " + err.Error()}
		close(p.done)
		return
	}
	p.run(r, out, time.Until(deadline), timeout)
}

// untilCanceled derives from parent a context that is also canceled when
// the attempt is canceled or killed. release ends the watch and cancels
// the context; read ctx.Err() before calling it if the cause matters.
func (p *Process) untilCanceled(parent context.Context) (ctx context.Context, release func()) {
	ctx, cancel := context.WithCancel(parent)
	stop := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-p.cancelCh:
			cancel()
		case <-stop:
		}
	}()
	return ctx, func() {
		close(stop)
		<-watchDone
		cancel()
	}
}

func (p *Process) canceled() bool {
	select {
	case <-p.cancelCh:
		return true
	default:
		return false
	}
}

func (p *Process) cancelReason() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancelWhy == "" {
		return "canceled"
	}
	return p.cancelWhy
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Pid returns the process id of the script's shell (also its process group
// id), or 0 while the source is being checked out and for container steps.
func (p *Process) Pid() int { return p.rn.pid() }

// WorkspacePath returns the absolute path of the attempt's workspace.
func (p *Process) WorkspacePath() string { return p.workspace }

// Cancel stops the attempt: SIGTERM to its process group, SIGKILL after the
// kill grace. The attempt ends with JOB_RESULT_CANCELED unless it had ended
// already. Cancel may be called more than once and from any goroutine.
func (p *Process) Cancel(reason string) {
	p.cancelOnce.Do(func() {
		p.mu.Lock()
		p.cancelWhy = reason
		p.mu.Unlock()
		close(p.cancelCh)
	})
}

// Kill stops the attempt at once with SIGKILL to its process group (hard
// stop of the agent). The attempt ends with JOB_RESULT_CANCELED.
func (p *Process) Kill() {
	p.Cancel("agent stopped")
	p.hardOnce.Do(func() { close(p.hardKill) })
}

// Done is closed when the attempt has ended and all its output was written.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait blocks until the attempt has ended and every byte of its output was
// written to the writer given to Start, and returns the outcome.
func (p *Process) Wait() Outcome {
	<-p.done
	return p.outcome
}

func (p *Process) signalGroup(sig syscall.Signal) { p.rn.signal(sig) }

// run supervises the attempt: timeout, cancellation, reaping, and the
// output copy. remaining is what is left of the attempt's timeout (less
// than timeout after a checkout).
func (p *Process) run(r *os.File, out io.Writer, remaining, timeout time.Duration) {
	defer close(p.done)

	var progress atomic.Int64 // bumped on every read or write of output
	var inRead atomic.Bool
	copyDone := make(chan struct{})
	go func() {
		defer close(copyDone)
		copyOutput(r, out, &progress, &inRead)
	}()

	waitDone := make(chan exitStatus, 1)
	go func() { waitDone <- p.rn.wait() }()

	timer := time.NewTimer(max(remaining, 0))
	defer timer.Stop()

	var (
		stopResult kilnv1.JobResult // set when we stopped the group
		stopReason string
		killTimer  <-chan time.Time
		st         exitStatus
	)
	beginStop := func(res kilnv1.JobResult, reason string) {
		if stopResult != kilnv1.JobResult_JOB_RESULT_UNSPECIFIED {
			return
		}
		stopResult, stopReason = res, reason
		p.signalGroup(syscall.SIGTERM)
		killTimer = time.After(p.grace)
	}
	cancelCh, hardKill := p.cancelCh, p.hardKill
loop:
	for {
		select {
		case st = <-waitDone:
			break loop
		case <-timer.C:
			beginStop(kilnv1.JobResult_JOB_RESULT_TIMED_OUT, "timed out after "+timeout.String())
		case <-cancelCh:
			cancelCh = nil
			beginStop(kilnv1.JobResult_JOB_RESULT_CANCELED, p.cancelReason())
		case <-hardKill:
			hardKill = nil
			p.signalGroup(syscall.SIGKILL)
		case <-killTimer:
			killTimer = nil
			p.signalGroup(syscall.SIGKILL)
		}
	}
	// The shell is gone; kill what is left of its group (background
	// children) so they neither outlive the job nor hold the pipe open.
	p.signalGroup(syscall.SIGKILL)

	// Wait for the pipe to reach EOF, giving up only once it has been idle
	// (no reads, and the reader is not blocked handing data to out) for
	// pipeIdle: a process outside the group may hold it open.
	idle := time.NewTicker(p.pipeIdle)
	last := progress.Load()
wait:
	for {
		select {
		case <-copyDone:
			break wait
		case <-idle.C:
			now := progress.Load()
			if now == last && inRead.Load() {
				_ = r.SetReadDeadline(time.Now())
			}
			last = now
		}
	}
	idle.Stop()
	r.Close()
	// The script's output is complete; the workspace (a bind mount for a
	// container) holds what the artifacts and reports need.
	p.rn.cleanup()

	switch {
	case stopResult != kilnv1.JobResult_JOB_RESULT_UNSPECIFIED:
		p.outcome = Outcome{Result: stopResult, ExitCode: st.code, Reason: stopReason}
	case st.err == nil && st.signal == "" && st.code == 0:
		p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_PASSED}
	default:
		reason := "exit code " + strconv.Itoa(int(st.code))
		switch {
		case st.signal != "":
			reason = "killed by signal " + st.signal
		case st.err != nil:
			reason = st.err.Error()
		}
		p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: st.code, Reason: reason}
	}
	ran := p.outcome.Result
	p.collectArtifacts(out)
	p.collectTests(ran, out)
}

// collectTests parses the attempt's JUnit reports after commands that
// ended PASSED or FAILED (ran), unless the attempt was canceled meanwhile.
// It never changes the result: a bad file is a report with an error.
func (p *Process) collectTests(ran kilnv1.JobResult, out io.Writer) {
	if len(p.spec.JUnit) == 0 || (ran != kilnv1.JobResult_JOB_RESULT_PASSED && ran != kilnv1.JobResult_JOB_RESULT_FAILED) || p.canceled() {
		return
	}
	ctx, release := p.untilCanceled(context.Background())
	reports, err := CollectTests(ctx, p.workspace, p.spec.JUnit, p.spec.TestLimits, out)
	release()
	if err != nil {
		fmt.Fprintf(out, "kiln: test reports: %v\n", err)
	}
	p.outcome.Tests = reports
}

// collectArtifacts uploads the attempt's artifacts after its commands
// ended PASSED or FAILED (not after a timeout or a cancel: the attempt is
// to stop now, and its workspace may be half-written). The upload does
// not count against the timeout; Cancel and Kill stop it. An upload
// failure turns PASSED into FAILED "artifact upload failed: ..." (a FAILED
// attempt keeps its reason); files uploaded before the failure are still
// reported.
func (p *Process) collectArtifacts(out io.Writer) {
	res := p.outcome.Result
	if len(p.spec.Artifacts) == 0 || (res != kilnv1.JobResult_JOB_RESULT_PASSED && res != kilnv1.JobResult_JOB_RESULT_FAILED) {
		return
	}
	ctx, release := p.untilCanceled(context.Background())
	files, err := uploadArtifacts(ctx, p.workspace, p.spec.Artifacts, p.spec.ArtifactLimits, p.spec.Upload, out)
	release()
	p.outcome.Artifacts = files
	if err == nil {
		return
	}
	fmt.Fprintf(out, "kiln: artifact upload failed: %v\n", err)
	if res != kilnv1.JobResult_JOB_RESULT_PASSED {
		return
	}
	if p.canceled() {
		p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_CANCELED, ExitCode: -1, Reason: p.cancelReason(), Artifacts: files}
		return
	}
	p.outcome = Outcome{Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: p.outcome.ExitCode, Reason: "artifact upload failed: " + err.Error(), Artifacts: files}
}

// copyOutput copies r to out until EOF (or a read error such as an expired
// deadline). After out fails, output is still read and discarded so that the
// job never blocks on a full pipe.
func copyOutput(r *os.File, out io.Writer, progress *atomic.Int64, inRead *atomic.Bool) {
	buf := make([]byte, readBufferSize)
	var outErr error
	for {
		inRead.Store(true)
		n, err := r.Read(buf)
		inRead.Store(false)
		progress.Add(1)
		if n > 0 && outErr == nil {
			_, outErr = out.Write(buf[:n])
			progress.Add(1)
		}
		if err != nil {
			return
		}
	}
}
