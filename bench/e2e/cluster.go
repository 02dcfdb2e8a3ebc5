package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// proc is one started binary: its own process group, output in a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(dir, name, bin string, args ...string) (*proc, error) {
	out, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL to the process group and waits for the process.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// stop asks the process group to end (SIGTERM), then kills it after d.
func (p *proc) stop(d time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		p.kill()
	}
}

// rssBytes is the process's resident set (VmRSS), 0 if unknown.
func (p *proc) rssBytes() int64 { return p.status("VmRSS:") }

// peakRSSBytes is the process's peak resident set (VmHWM), 0 if unknown.
func (p *proc) peakRSSBytes() int64 { return p.status("VmHWM:") }

// status reads a kB field of /proc/PID/status.
func (p *proc) status(field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// cluster is 3 coordinator processes and some agent processes.
type cluster struct {
	dir    string
	bin    string
	coords []*proc
	grpc   []string
	agents []*proc
	cl     *client.Client
}

// startCluster starts 3 coordinators from bin on loopback and waits for a
// leader.
func startCluster(ctx context.Context, bin, dir string, extra ...string) (*cluster, error) {
	c := &cluster{dir: dir, bin: bin}
	var raftAddrs []string
	for i := 0; i < 3; i++ {
		gp, err := freePort()
		if err != nil {
			return nil, err
		}
		rp, err := freePort()
		if err != nil {
			return nil, err
		}
		c.grpc = append(c.grpc, fmt.Sprintf("127.0.0.1:%d", gp))
		raftAddrs = append(raftAddrs, fmt.Sprintf("n%d=127.0.0.1:%d", i+1, rp))
	}
	// Coordinators that serve HTTP (--http-addr, default 127.0.0.1:7080)
	// get a free port each; older binaries have no such flag.
	httpFlag := hasFlag(filepath.Join(bin, "kiln-coordinator"), "http-addr")
	for i := 0; i < 3; i++ {
		raft := strings.SplitN(raftAddrs[i], "=", 2)[1]
		args := append([]string{
			"--node-id", fmt.Sprintf("n%d", i+1), "--data-dir", filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			"--grpc-addr", c.grpc[i], "--raft-addr", raft, "--initial-cluster", strings.Join(raftAddrs, ","),
			"--log-level", "warn",
		}, extra...)
		if httpFlag {
			args = append(args, "--http-addr", "127.0.0.1:0")
		}
		p, err := startProc(dir, fmt.Sprintf("coordinator-%d", i+1), filepath.Join(bin, "kiln-coordinator"), args...)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.coords = append(c.coords, p)
	}
	cl, err := client.New(c.grpc, zap.NewNop())
	if err != nil {
		c.stop()
		return nil, err
	}
	c.cl = cl
	if _, err := c.waitLeader(ctx, -1); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// waitLeader waits until a coordinator other than skip answers as leader
// and returns its index.
func (c *cluster) waitLeader(ctx context.Context, skip int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		for i, addr := range c.grpc {
			if i == skip {
				continue
			}
			var st *kilnv1.StatusResponse
			err := c.call(ctx, addr, func(ctx context.Context, conn grpc.ClientConnInterface) error {
				var err error
				st, err = kilnv1.NewClusterServiceClient(conn).Status(ctx, &kilnv1.StatusRequest{})
				return err
			})
			if err == nil && st.GetLeader() != "" && st.GetLeader() == st.GetNodeId() {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond): // polling a process we do not control
		}
	}
}

// call runs fn on a connection to addr alone (no redirects), within 1 s.
func (c *cluster) call(ctx context.Context, addr string, fn func(context.Context, grpc.ClientConnInterface) error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return fn(cctx, conn)
}

// startAgents starts n kiln-agent processes with slots each and waits
// until the cluster lists them connected.
func (c *cluster) startAgents(ctx context.Context, n, slots int) error {
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("agent-%d", len(c.agents)+1)
		p, err := startProc(c.dir, name, filepath.Join(c.bin, "kiln-agent"),
			"--coordinators", strings.Join(c.grpc, ","), "--name", name, "--slots", strconv.Itoa(slots),
			"--work-dir", filepath.Join(c.dir, name), "--log-level", "warn")
		if err != nil {
			return err
		}
		c.agents = append(c.agents, p)
	}
	return c.waitAgents(ctx, len(c.agents))
}

// waitAgents waits until n agents are connected.
func (c *cluster) waitAgents(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		got := 0
		err := c.cl.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
			resp, err := kilnv1.NewControlServiceClient(conn).ListAgents(ctx, &kilnv1.ListAgentsRequest{})
			if err != nil {
				return err
			}
			for _, a := range resp.GetAgents() {
				if a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED {
					got++
				}
			}
			return nil
		})
		if err == nil && got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d agents connected: %w", got, n, ctx.Err())
		case <-time.After(200 * time.Millisecond): // polling processes we do not control
		}
	}
}

// leader returns the index of the coordinator that leads now.
func (c *cluster) leader(ctx context.Context) (int, error) { return c.waitLeader(ctx, -1) }

func (c *cluster) stop() {
	if c.cl != nil {
		c.cl.Close()
	}
	for _, a := range c.agents {
		a.stop(5 * time.Second)
	}
	for _, p := range c.coords {
		p.stop(5 * time.Second)
	}
}

// hasFlag reports whether the program at path lists -name in its -h output.
func hasFlag(path, name string) bool {
	out, _ := exec.Command(path, "-h").CombinedOutput()
	return strings.Contains(string(out), "-"+name+" ")
}
