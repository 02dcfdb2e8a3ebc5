package executor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Sandbox runs shell steps under bubblewrap (bwrap). The step sees:
//
//   - its own workspace, read-write, at the same path as on the host (so
//     KILN_WORKSPACE holds), and nothing else of the agent's work dir;
//   - the system directories /usr, /bin, /sbin, /lib*, /etc and /opt
//     read-only;
//   - a private /tmp and /var/tmp (empty tmpfs), its own /proc and a
//     minimal /dev;
//   - its own PID, IPC and UTS namespaces: it cannot see or signal any
//     process outside the sandbox;
//   - with network: none, its own empty network namespace (loopback only).
//
// It runs with no capabilities (--cap-drop ALL) and dies with the agent
// (--die-with-parent). Its environment is sandboxEnv plus the step's, not
// the agent's. What it does not protect against is in README.md
// ("Sandboxed shell jobs").
type Sandbox struct {
	// Bwrap is the path of the bwrap binary.
	Bwrap string
	// Hide are host paths masked inside the sandbox even though they lie
	// in a read-only system directory: a directory becomes an empty
	// tmpfs, a file an empty file. NewSandbox starts from DefaultHidden.
	Hide []string
	// ReadOnly are the host directories bound read-only; nil means
	// SystemDirs.
	ReadOnly []string
}

// DefaultHidden is what the sandbox hides of /etc: the agent's own
// configuration (deployments/systemd puts its environment file there).
var DefaultHidden = []string{"/etc/kiln"}

// SystemDirs are bound read-only into the sandbox when they exist on the
// host.
var SystemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"}

// NewSandbox finds bwrap and checks that it can create a sandbox on this
// host (user namespaces allowed, or root), so that an agent started with
// --sandbox fails at start rather than at its first job. hide adds paths
// to DefaultHidden.
func NewSandbox(ctx context.Context, hide ...string) (*Sandbox, error) {
	path, err := exec.LookPath("bwrap")
	if err != nil {
		return nil, fmt.Errorf("sandbox: bubblewrap is not installed (apt-get install bubblewrap): %w", err)
	}
	s := &Sandbox{Bwrap: path, Hide: append(append([]string(nil), DefaultHidden...), hide...)}
	for _, h := range s.Hide {
		if !filepath.IsAbs(h) {
			return nil, fmt.Errorf("sandbox: path to hide %q is not absolute", h)
		}
	}
	dir, err := os.MkdirTemp("", "kiln-sandbox-probe-")
	if err != nil {
		return nil, fmt.Errorf("sandbox: probe dir: %w", err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	argv := s.wrap(dir, true, []string{"/bin/sh", "-c", "true"})
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("sandbox: bwrap cannot create a sandbox here: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return s, nil
}

// wrap returns the bwrap command line that runs argv in the sandbox of
// workspace ws.
func (s *Sandbox) wrap(ws string, noNetwork bool, argv []string) []string {
	args := []string{s.Bwrap,
		"--die-with-parent",
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--cap-drop", "ALL",
		"--hostname", "kiln-sandbox",
	}
	if noNetwork {
		args = append(args, "--unshare-net")
	}
	// The private directories first, so that a read-only directory or the
	// workspace below /tmp is mounted on top of the fresh tmpfs.
	args = append(args,
		"--proc", "/proc",
		"--dev", "/dev",
		"--tmpfs", "/tmp",
		"--tmpfs", "/var/tmp",
		"--tmpfs", "/run",
	)
	ro := s.ReadOnly
	if ro == nil {
		ro = SystemDirs
	}
	for _, d := range ro {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			// merged /usr: /bin -> usr/bin; keep the link, not a copy.
			if target, err := os.Readlink(d); err == nil {
				args = append(args, "--symlink", target, d)
			}
		case fi.IsDir():
			args = append(args, "--ro-bind", d, d)
		}
	}
	for _, h := range s.Hide {
		fi, err := os.Stat(h)
		switch {
		case err != nil:
		case fi.IsDir():
			args = append(args, "--tmpfs", h)
		default:
			args = append(args, "--ro-bind", os.DevNull, h)
		}
	}
	// The workspace last. Its parent, the agent's work dir, is masked first: were it
	// below a read-only system directory (/opt/kiln/work), every other
	// job's workspace would show through.
	args = append(args, "--tmpfs", filepath.Dir(ws), "--bind", ws, ws, "--chdir", ws, "--")
	return append(args, argv...)
}

// sandboxEnv is the base environment of a sandboxed step: enough to run
// tools, nothing of the agent's own (its tokens, its configuration).
func sandboxEnv() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin"
	}
	env := []string{"PATH=" + path, "HOME=/tmp", "TMPDIR=/tmp"}
	for _, k := range []string{"LANG", "LC_ALL", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
