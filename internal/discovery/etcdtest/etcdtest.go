// Package etcdtest starts a real, single-member etcd server (Debian's
// etcd-server package, the etcd binary on PATH) for tests, on loopback
// ports in a temporary data directory.
package etcdtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds the wait for etcd to serve clients.
const startTimeout = 30 * time.Second

// Start runs an etcd server for t and returns its client URL. The server
// is killed and waited for when t ends. Without an etcd binary the test is
// skipped, unless $CI is set (.ci/run installs etcd-server), where it fails.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("etcd not found (.ci/run installs Debian's etcd-server): %v", err)
		}
		t.Skipf("etcd not found: apt-get install etcd-server: %v", err)
	}
	ports := freePorts(t, 2)
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	cmd := exec.Command(bin,
		"--name", "test",
		"--data-dir", t.TempDir(),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer,
		"--initial-cluster-state", "new",
		"--log-level", "info",
		"--logger", "zap",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// An io.Pipe, not StderrPipe: Wait then waits for the copy instead of
	// closing the pipe under the reader.
	stderr, stderrW := io.Pipe()
	cmd.Stderr = stderrW
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	ready := make(chan struct{})
	var (
		mu   sync.Mutex
		tail []string // the last lines, for a failure message
	)
	done := make(chan struct{})
	go func() { // owned by the test: ends when etcd's stderr closes
		defer close(done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			tail = append(tail, line)
			if len(tail) > 20 {
				tail = tail[1:]
			}
			mu.Unlock()
			// 3.4 logs "serving client traffic insecurely", later
			// versions "ready to serve client requests".
			if strings.Contains(line, "serving client traffic") || strings.Contains(line, "ready to serve client requests") {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // a scan error must not block etcd's writes
	}()
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		_ = stderrW.Close()
		exited <- err
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	select {
	case <-ready:
		return client
	case err := <-exited:
		exited <- err
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("etcd exited before serving: %v\n%s", err, strings.Join(tail, "\n"))
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("etcd not ready after %s:\n%s", startTimeout, strings.Join(tail, "\n"))
	}
	return ""
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return out
}
