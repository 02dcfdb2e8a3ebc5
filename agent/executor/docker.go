package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Labels on every container and network the Docker executor creates. A
// restarted agent removes the ones of its name and work dir
// (RemoveOrphans): it holds no attempt after a restart.
const (
	LabelManaged = "kiln.managed"
	LabelAgent   = "kiln.agent"
	LabelWorkDir = "kiln.workdir"
	LabelBuild   = "kiln.build"
	LabelJob     = "kiln.job"
	LabelAttempt = "kiln.attempt"
	LabelRole    = "kiln.role" // "step" or "service"
)

// ContainerWorkspace is where the attempt's workspace is mounted in a
// step's container, and the container's working directory.
const ContainerWorkspace = "/workspace"

// dockerCallTimeout bounds one Docker API call that should be quick
// (create, start, kill, remove, inspect); pulls are bounded by the
// attempt's timeout instead.
const dockerCallTimeout = 30 * time.Second

// Docker is a connection to a Docker engine through its API (the
// github.com/moby/moby/client module, not the docker CLI). Safe for
// concurrent use.
type Docker struct {
	cli  *client.Client
	host string
}

// NewDocker connects to the engine at host ("" means DOCKER_HOST or the
// default socket) and checks that it answers.
func NewDocker(ctx context.Context, host string) (*Docker, error) {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: client for %q: %w", host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("docker: engine at %q does not answer: %w", cli.DaemonHost(), err)
	}
	return &Docker{cli: cli, host: cli.DaemonHost()}, nil
}

// Host is the engine's address.
func (d *Docker) Host() string { return d.host }

// Client is the underlying API client (tests build images with it).
func (d *Docker) Client() *client.Client { return d.cli }

// Close releases the client's connections.
func (d *Docker) Close() error { return d.cli.Close() }

// RemoveOrphans force-removes the containers, then the networks, that the
// agent named agent with work dir workDir created and whose attempt keep
// does not claim (keep nil: all of them). An agent calls it at start,
// when it holds no attempt: whatever a killed predecessor left behind
// goes. It returns how many containers it removed.
func (d *Docker) RemoveOrphans(ctx context.Context, agent, workDir string, keep func(job string, attempt uint32) bool) (int, error) {
	workDir, err := filepath.Abs(workDir)
	if err != nil {
		return 0, fmt.Errorf("docker: work dir: %w", err)
	}
	f := make(client.Filters).Add("label", LabelManaged+"=true", LabelAgent+"="+agent, LabelWorkDir+"="+workDir)
	list, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return 0, fmt.Errorf("docker: list containers: %w", err)
	}
	n := 0
	var errs []error
	for _, c := range list.Items {
		att, _ := strconv.ParseUint(c.Labels[LabelAttempt], 10, 32)
		if keep != nil && keep(c.Labels[LabelJob], uint32(att)) {
			continue
		}
		if _, err := d.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("docker: remove container %s: %w", c.ID, err))
			continue
		}
		n++
	}
	nets, err := d.cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		errs = append(errs, fmt.Errorf("docker: list networks: %w", err))
	} else {
		for _, nw := range nets.Items {
			att, _ := strconv.ParseUint(nw.Labels[LabelAttempt], 10, 32)
			if keep != nil && keep(nw.Labels[LabelJob], uint32(att)) {
				continue
			}
			if _, err := d.cli.NetworkRemove(ctx, nw.ID, client.NetworkRemoveOptions{}); err != nil && !cerrdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("docker: remove network %s: %w", nw.Name, err))
			}
		}
	}
	return n, errors.Join(errs...)
}

// ensureImage makes image present according to the pull policy.
func (d *Docker) ensureImage(ctx context.Context, image, policy string, out io.Writer) error {
	if policy == "" {
		policy = "if-not-present"
	}
	if policy != "always" {
		_, err := d.cli.ImageInspect(ctx, image)
		switch {
		case err == nil:
			return nil
		case !cerrdefs.IsNotFound(err):
			return fmt.Errorf("inspect image %s: %w", image, err)
		case policy == "never":
			return fmt.Errorf("image %s is not present on this agent and pull is never", image)
		}
	}
	fmt.Fprintf(out, "kiln: pulling image %s\n", image)
	resp, err := d.cli.ImagePull(ctx, image, client.ImagePullOptions{})
	if err != nil {
		return fmt.Errorf("pull image %s: %w", image, err)
	}
	defer resp.Close()
	if err := resp.Wait(ctx); err != nil {
		return fmt.Errorf("pull image %s: %w", image, err)
	}
	return nil
}

// dockerRunner runs one attempt's script in a container of the step's
// image: the workspace bind-mounted at /workspace (the working
// directory), the step's environment, /bin/sh -e -c, an init process
// (docker-init) as PID 1 so that SIGTERM reaches the shell. Services run
// beside it on a network of their own.
type dockerRunner struct {
	d       *Docker
	agent   string
	workDir string
	ws      string
	spec    Spec
	script  string

	mu       sync.Mutex
	id       string   // the step's container, once created
	services []string // service container ids
	network  string   // the job's network id, when it has services
	attach   *client.HijackedResponse
	started  atomic.Bool
	cleaned  bool
}

// labels are the labels of the attempt's containers and network.
func (r *dockerRunner) labels(role string) map[string]string {
	wd, _ := filepath.Abs(r.workDir)
	return map[string]string{
		LabelManaged: "true",
		LabelAgent:   r.agent,
		LabelWorkDir: wd,
		LabelBuild:   r.spec.BuildID,
		LabelJob:     r.spec.JobID,
		LabelAttempt: strconv.FormatUint(uint64(r.spec.Attempt), 10),
		LabelRole:    role,
	}
}

// name is a unique container or network name for the attempt.
func (r *dockerRunner) name(suffix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := Workspace(r.spec.JobID, r.spec.Attempt)
	if len(base) > 100 {
		base = base[:100]
	}
	return "kiln-" + base + "-" + hex.EncodeToString(b[:]) + suffix
}

// create pulls the image if needed, starts the services and creates (but
// does not start) the step's container. What it created is recorded so
// that cleanup removes it even when create fails halfway.
func (r *dockerRunner) create(ctx context.Context, out io.Writer) error {
	rt := r.spec.Runtime
	if err := r.d.ensureImage(ctx, rt.GetImage(), rt.GetPull(), out); err != nil {
		return err
	}
	netMode := container.NetworkMode("bridge")
	if rt.GetNetwork() == "none" {
		netMode = "none"
	}
	if len(rt.GetServices()) > 0 {
		nw, err := r.d.cli.NetworkCreate(ctx, r.name("-net"), client.NetworkCreateOptions{Driver: "bridge", Labels: r.labels("network")})
		if err != nil {
			return fmt.Errorf("create the job's network: %w", err)
		}
		r.mu.Lock()
		r.network = nw.ID
		r.mu.Unlock()
		netMode = container.NetworkMode(nw.ID)
		for _, svc := range rt.GetServices() {
			if err := r.startService(ctx, nw.ID, svc, rt.GetPull(), out); err != nil {
				return fmt.Errorf("service %s: %w", svc.GetName(), err)
			}
		}
	}
	env := make([]string, 0, len(r.spec.Env)+4)
	keys := make([]string, 0, len(r.spec.Env))
	for k := range r.spec.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+r.spec.Env[k])
	}
	env = append(env,
		"KILN_BUILD_ID="+r.spec.BuildID,
		"KILN_JOB_ID="+r.spec.JobID,
		"KILN_ATTEMPT="+strconv.FormatUint(uint64(r.spec.Attempt), 10),
		"KILN_WORKSPACE="+ContainerWorkspace,
	)
	yes := true
	res, err := r.d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: r.name(""),
		Config: &container.Config{
			Image:        rt.GetImage(),
			Entrypoint:   []string{"/bin/sh", "-e", "-c"},
			Cmd:          []string{r.script},
			Env:          env,
			WorkingDir:   ContainerWorkspace,
			User:         rt.GetUser(),
			Labels:       r.labels("step"),
			AttachStdout: true,
			AttachStderr: true,
		},
		HostConfig: &container.HostConfig{
			Mounts:      []mount.Mount{{Type: mount.TypeBind, Source: r.ws, Target: ContainerWorkspace}},
			NetworkMode: netMode,
			Init:        &yes,
			Resources:   container.Resources{NanoCPUs: rt.GetNanoCpus(), Memory: rt.GetMemoryBytes()},
		},
	})
	if err != nil {
		return fmt.Errorf("create container of image %s: %w", rt.GetImage(), err)
	}
	r.mu.Lock()
	r.id = res.ID
	r.mu.Unlock()
	fmt.Fprintf(out, "kiln: running in a container of image %s\n", rt.GetImage())
	return nil
}

// startService runs one service container on the job's network, reachable
// by its name.
func (r *dockerRunner) startService(ctx context.Context, netID string, svc *kilnv1.ServiceSpec, pull string, out io.Writer) error {
	name, image := svc.GetName(), svc.GetImage()
	if err := r.d.ensureImage(ctx, image, pull, out); err != nil {
		return err
	}
	var vars []string
	for k, v := range svc.GetEnv() {
		vars = append(vars, k+"="+v)
	}
	sort.Strings(vars)
	yes := true
	res, err := r.d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:   r.name("-" + name),
		Config: &container.Config{Image: image, Env: vars, Labels: r.labels("service"), Hostname: name, Cmd: svc.GetCommand()},
		HostConfig: &container.HostConfig{
			NetworkMode: container.NetworkMode(netID),
			Init:        &yes,
		},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			netID: {Aliases: []string{name}},
		}},
	})
	if err != nil {
		return fmt.Errorf("create container of image %s: %w", image, err)
	}
	r.mu.Lock()
	r.services = append(r.services, res.ID)
	r.mu.Unlock()
	if _, err := r.d.cli.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	fmt.Fprintf(out, "kiln: service %s started (image %s)\n", name, image)
	return nil
}

func (r *dockerRunner) start(w *os.File) error {
	r.mu.Lock()
	id := r.id
	r.mu.Unlock()
	if id == "" {
		w.Close()
		return errors.New("executor: the container was not created")
	}
	// Attach before start so that no output is lost; the stream lives as
	// long as the container, so it gets no deadline.
	att, err := r.d.cli.ContainerAttach(context.Background(), id, client.ContainerAttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		w.Close()
		return fmt.Errorf("executor: attach to container: %w", err)
	}
	r.mu.Lock()
	r.attach = &att.HijackedResponse
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	if _, err := r.d.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		att.Close()
		w.Close()
		return fmt.Errorf("executor: start container: %w", err)
	}
	r.started.Store(true)
	go func() {
		// Both streams into the one pipe, in the order Docker framed them.
		_, _ = stdcopy.StdCopy(w, w, att.Reader)
		w.Close()
	}()
	return nil
}

func (r *dockerRunner) wait() exitStatus {
	r.mu.Lock()
	id := r.id
	r.mu.Unlock()
	res := r.d.cli.ContainerWait(context.Background(), id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case wr := <-res.Result:
		if wr.Error != nil && wr.Error.Message != "" {
			return exitStatus{code: -1, err: fmt.Errorf("container: %s", wr.Error.Message)}
		}
		// A shell killed by signal n shows as 128+n (the init's exit code).
		return exitStatus{code: int32(wr.StatusCode)}
	case err := <-res.Error:
		return exitStatus{code: -1, err: fmt.Errorf("wait for the container: %w", err)}
	}
}

// signal sends sig to the container's init, which passes it to the shell;
// SIGKILL kills the whole container.
func (r *dockerRunner) signal(sig syscall.Signal) {
	r.mu.Lock()
	id := r.id
	r.mu.Unlock()
	if id == "" || !r.started.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	name := "SIGKILL"
	if sig == syscall.SIGTERM {
		name = "SIGTERM"
	}
	_, _ = r.d.cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: name}) // not running: nothing to do
}

func (r *dockerRunner) pid() int { return 0 }

func (r *dockerRunner) setScript(script string, env map[string]string) {
	r.script = script
	merged := make(map[string]string, len(env)+len(r.spec.Env))
	for k, v := range env {
		merged[k] = v
	}
	for k, v := range r.spec.Env { // the build's and step's win
		merged[k] = v
	}
	r.spec.Env = merged
}

// cleanup force-removes the step's container, the services and the
// network. A failure is left to RemoveOrphans at the agent's next start.
func (r *dockerRunner) cleanup() {
	r.mu.Lock()
	if r.cleaned {
		r.mu.Unlock()
		return
	}
	r.cleaned = true
	ids := append([]string{r.id}, r.services...)
	netID, att := r.network, r.attach
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	for _, id := range ids {
		if id != "" {
			_, _ = r.d.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		}
	}
	if att != nil {
		att.Close()
	}
	if netID != "" {
		_, _ = r.d.cli.NetworkRemove(ctx, netID, client.NetworkRemoveOptions{})
	}
}
