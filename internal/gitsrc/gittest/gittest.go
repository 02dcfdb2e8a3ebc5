// Package gittest makes real git repositories for tests: created in
// t.TempDir() with the git CLI, reachable by file:// URL or served by a
// `git daemon` on loopback (stopped at cleanup).
package gittest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Repo is a non-bare repository in a temp dir.
type Repo struct {
	t   testing.TB
	Dir string
}

// RequireGit skips the test when git is not installed.
func RequireGit(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
}

// New creates an empty repository whose default branch is branch.
func New(t testing.TB, branch string) *Repo {
	t.Helper()
	RequireGit(t)
	r := &Repo{t: t, Dir: filepath.Join(t.TempDir(), "repo")}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.Git("init", "-q", "-b", branch)
	return r
}

// URL is the repository's file:// URL.
func (r *Repo) URL() string { return "file://" + filepath.ToSlash(r.Dir) }

// Git runs git in the repository and returns its trimmed stdout.
func (r *Repo) Git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=Kiln Test", "-c", "user.email=test@kiln.invalid",
		"-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"}, args...)...)
	cmd.Dir = r.Dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// Commit writes files (path -> content) on the current branch, commits
// them and returns the new commit id.
func (r *Repo) Commit(msg string, files map[string]string) string {
	r.t.Helper()
	for p, content := range files {
		full := filepath.Join(r.Dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.Git("add", "-A")
	r.Git("commit", "-q", "--allow-empty", "-m", msg)
	return r.Head()
}

// Head is the current commit id.
func (r *Repo) Head() string {
	r.t.Helper()
	return r.Git("rev-parse", "HEAD")
}

// Daemon serves the repository's parent directory with git daemon on a free
// loopback port and returns the git:// URL of the repository. The daemon is
// killed at cleanup.
func (r *Repo) Daemon() string {
	r.t.Helper()
	base := filepath.Dir(r.Dir)
	var lastErr error
	for try := 0; try < 5; try++ {
		port, err := freePort()
		if err != nil {
			r.t.Fatal(err)
		}
		cmd := exec.Command("git", "daemon", "--export-all", "--reuseaddr", "--base-path="+base,
			"--listen=127.0.0.1", fmt.Sprintf("--port=%d", port), base)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 2 * time.Second
		if err := cmd.Start(); err != nil {
			r.t.Fatalf("git daemon: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			// The daemon forks a child per connection: kill the whole group.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		url := fmt.Sprintf("git://127.0.0.1:%d/%s", port, filepath.Base(r.Dir))
		if waitReady(url, exited) {
			r.t.Cleanup(stop)
			return url
		}
		stop()
		lastErr = fmt.Errorf("git daemon on port %d did not come up: %s", port, errb.String())
	}
	r.t.Fatal(lastErr)
	return ""
}

// waitReady polls git ls-remote until the daemon answers.
func waitReady(url string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := exec.CommandContext(ctx, "git", "ls-remote", "--", url).Run()
		cancel()
		if err == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
