package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/agentapi"
)

const (
	// maxConcurrentExecs bounds the commands running at once; more exec
	// requests are refused.
	maxConcurrentExecs = 8
	// execWaitDelay is how long a command's output is still read once it
	// has exited (or been killed) while something else, such as a
	// background child, holds its stdout or stderr open.
	execWaitDelay = 2 * time.Second
	// defaultPath is the PATH of commands whose environment has none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// errTimedOut is the cause of an exec context whose timeout passed.
var errTimedOut = errors.New("exec timed out")

// runCommand runs req (validated, with defaults) in its own process group
// and returns what it did. The whole group is killed with SIGKILL when
// req.Timeout passes or ctx is done. An error means the command did not
// start.
func runCommand(ctx context.Context, req agentapi.ExecRequest) (agentapi.ExecResult, error) {
	env := commandEnv(os.Environ(), req.Env)
	path, err := guestuser.LookPath(req.Argv[0], envValue(env, "PATH"))
	if err != nil {
		return agentapi.ExecResult{}, err
	}
	if err := checkDir(req.Dir); err != nil {
		return agentapi.ExecResult{}, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, req.Timeout, errTimedOut)
	defer cancel()

	stdout := &cappedBuffer{limit: agentapi.MaxExecOutput}
	stderr := &cappedBuffer{limit: agentapi.MaxExecOutput}
	cmd := exec.CommandContext(ctx, path)
	cmd.Args, cmd.Env, cmd.Dir = req.Argv, env, req.Dir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if len(req.Stdin) > 0 {
		cmd.Stdin = bytes.NewReader(req.Stdin)
	}
	var killed atomic.Bool
	cmd.Cancel = func() error {
		killed.Store(true)
		return killProcessGroup(cmd.Process.Pid)
	}
	cmd.WaitDelay = execWaitDelay
	setProcessGroup(cmd)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return agentapi.ExecResult{}, fmt.Errorf("start %s: %w", req.Argv[0], err)
	}
	waitErr := cmd.Wait()
	if cmd.ProcessState == nil {
		return agentapi.ExecResult{}, fmt.Errorf("wait for %s: %w", req.Argv[0], waitErr)
	}
	res := agentapi.ExecResult{
		Stdout: stdout.buf, Stderr: stderr.buf,
		StdoutTruncated: stdout.truncated, StderrTruncated: stderr.truncated,
		Duration: time.Since(start),
	}
	res.ExitCode, res.Signal = exitStatus(cmd.ProcessState)
	if killed.Load() && errors.Is(context.Cause(ctx), errTimedOut) {
		res.TimedOut, res.ExitCode = true, -1
	}
	return res, nil
}

// commandEnv returns base followed by extra (later entries win), with a
// default PATH if neither sets one.
func commandEnv(base, extra []string) []string {
	env := make([]string, 0, len(base)+len(extra)+1)
	env = append(env, base...)
	env = append(env, extra...)
	if _, ok := lookupEnv(env, "PATH"); !ok {
		env = append(env, "PATH="+defaultPath)
	}
	return env
}

// envValue returns the value of key in env (the last one wins), or "".
func envValue(env []string, key string) string {
	v, _ := lookupEnv(env, key)
	return v
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// checkDir reports a working directory that does not exist, which the
// error of a failed start would blame on the command.
func checkDir(dir string) error {
	if dir == "" {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("working directory %s: not a directory", dir)
	}
	return nil
}

// cappedBuffer keeps the first limit bytes written to it and discards the
// rest, never failing a write, so the command is not stopped by a closed
// pipe. Each buffer is written by one goroutine and read after Wait.
type cappedBuffer struct {
	buf       []byte
	limit     int
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.limit - len(b.buf)
	if len(p) > room {
		b.truncated = true
		b.buf = append(b.buf, p[:room]...)
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}
