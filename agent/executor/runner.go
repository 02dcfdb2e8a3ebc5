package executor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
)

// runner runs an attempt's script: a process group on the host (the shell
// executor, optionally under bubblewrap) or a container (dockerRunner).
// The Process drives it: start once, wait once, signal any number of
// times until cleanup, cleanup once at the end (also when start failed
// or was never called).
type runner interface {
	// start starts the script with stdout and stderr both written to w;
	// start closes w (at once, or when the output ends).
	start(w *os.File) error
	// wait blocks until the script's main process has ended.
	wait() exitStatus
	// signal sends sig to the script and everything it started; a no-op
	// once they are gone.
	signal(sig syscall.Signal)
	// pid is the host process id of the script's shell, 0 when there is
	// none (a container, or not started yet).
	pid() int
	// cleanup releases what the runner created on the host (containers,
	// networks). It is called after wait, or instead of start.
	cleanup()
	// setScript replaces the script and adds env under the step's own
	// variables (a buildspec read from the workspace). Called before
	// start, during the preparation.
	setScript(script string, env map[string]string)
}

// exitStatus is how the script's main process ended.
type exitStatus struct {
	// code is the exit code; -1 when killed by a signal or unknown.
	code int32
	// signal names the signal that killed it, if one did.
	signal string
	// err is set when the end could not be observed.
	err error
}

// shellRunner runs the script as a process group on the host.
type shellRunner struct {
	argv   []string // the shell (possibly wrapped by bwrap) before the script
	script string
	env    []string
	dir    string

	cmd  *exec.Cmd
	gpid atomic.Int64 // set once the shell has started
}

func (s *shellRunner) setScript(script string, env map[string]string) {
	s.script = script
	// Earlier entries lose to later ones (exec dedups keeping the last), so
	// the buildspec's variables go first: the build's and step's win.
	vars := make([]string, 0, len(env)+len(s.env))
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	s.env = append(vars, s.env...)
}

func (s *shellRunner) start(w *os.File) error {
	cmd := exec.Command(s.argv[0], append(s.argv[1:len(s.argv):len(s.argv)], s.script)...)
	cmd.Dir = s.dir
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.cmd = cmd
	cmd.Stdout = w
	cmd.Stderr = w
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		w.Close()
		return fmt.Errorf("executor: open %s: %w", os.DevNull, err)
	}
	cmd.Stdin = devnull
	startErr := cmd.Start()
	w.Close()
	devnull.Close()
	if startErr != nil {
		return fmt.Errorf("executor: start %s: %w", cmd.Path, startErr)
	}
	s.gpid.Store(int64(cmd.Process.Pid))
	return nil
}

func (s *shellRunner) wait() exitStatus {
	err := s.cmd.Wait()
	if err == nil {
		return exitStatus{}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		st := exitStatus{code: int32(ee.ExitCode())}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			st.signal = ws.Signal().String()
		}
		return st
	}
	return exitStatus{code: -1, err: err}
}

func (s *shellRunner) signal(sig syscall.Signal) {
	// The negative pid addresses the process group. ESRCH (group gone) is fine.
	if pid := int(s.gpid.Load()); pid > 0 {
		_ = syscall.Kill(-pid, sig)
	}
}

func (s *shellRunner) pid() int { return int(s.gpid.Load()) }

func (s *shellRunner) cleanup() {}
