package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on exec requests and results. They keep both lines well under
// MaxLineSize: argv, env and dir are at most MaxExecArgBytes (at most six
// bytes each once JSON-escaped), stdin and the output streams travel as
// base64.
const (
	// DefaultExecTimeout is used when ExecRequest.Timeout is zero.
	DefaultExecTimeout = 30 * time.Second
	// MaxExecTimeout bounds ExecRequest.Timeout.
	MaxExecTimeout = 10 * time.Minute
	// MaxExecArgs and MaxExecEnv bound the number of argv and env entries.
	MaxExecArgs = 1024
	MaxExecEnv  = 1024
	// MaxExecArgBytes bounds the bytes of argv, env and dir together.
	MaxExecArgBytes = 128 << 10
	// MaxExecStdin bounds ExecRequest.Stdin.
	MaxExecStdin = 64 << 10
	// MaxExecOutput is the most of each output stream the guest returns;
	// the rest is discarded (and the command is not stopped for it).
	MaxExecOutput = 256 << 10

	maxSignalName = 32
)

// ExecRequest runs a command in the guest (host → guest, request "exec").
//
// The command runs as the agent's user (root), in its own process group,
// with the agent's environment plus Env. On the wire the timeout is
// timeout_ms and stdin is base64 (stdin_b64).
type ExecRequest struct {
	// Argv is the command and its arguments. Argv[0] is an absolute path,
	// or a name without a slash looked up in PATH (Env's PATH if it sets
	// one).
	Argv []string
	// Env are extra "KEY=value" variables; they override the agent's.
	Env []string
	// Dir is the working directory (absolute); empty means the agent's.
	Dir string
	// Timeout bounds the command; when it passes, the whole process group
	// is killed with SIGKILL. Zero means DefaultExecTimeout.
	Timeout time.Duration
	// Stdin is the command's standard input (at most MaxExecStdin bytes);
	// empty means /dev/null.
	Stdin []byte
}

type execRequestWire struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"`
	Dir       string   `json:"dir,omitempty"`
	TimeoutMS int64    `json:"timeout_ms,omitempty"`
	Stdin     []byte   `json:"stdin_b64,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (r ExecRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(execRequestWire{
		Argv: r.Argv, Env: r.Env, Dir: r.Dir, TimeoutMS: r.Timeout.Milliseconds(), Stdin: r.Stdin,
	})
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *ExecRequest) UnmarshalJSON(b []byte) error {
	var w execRequestWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.TimeoutMS < 0 || w.TimeoutMS > MaxExecTimeout.Milliseconds() {
		return fmt.Errorf("timeout_ms %d out of range", w.TimeoutMS)
	}
	*r = ExecRequest{
		Argv: w.Argv, Env: w.Env, Dir: w.Dir,
		Timeout: time.Duration(w.TimeoutMS) * time.Millisecond, Stdin: w.Stdin,
	}
	return nil
}

// WithDefaults returns r with a zero Timeout replaced by DefaultExecTimeout.
func (r ExecRequest) WithDefaults() ExecRequest {
	if r.Timeout == 0 {
		r.Timeout = DefaultExecTimeout
	}
	return r
}

// Validate checks the request against the limits above. A zero Timeout is
// valid (it means DefaultExecTimeout).
func (r ExecRequest) Validate() error {
	if err := checkArgv(r.Argv); err != nil {
		return err
	}
	if err := checkEnv(r.Env); err != nil {
		return err
	}
	if r.Dir != "" && !strings.HasPrefix(r.Dir, "/") {
		return fmt.Errorf("exec dir %q is not absolute", clipForError(r.Dir))
	}
	if err := checkExecText("dir", r.Dir); err != nil {
		return err
	}
	if n := argBytes(r); n > MaxExecArgBytes {
		return fmt.Errorf("exec argv, env and dir are %d bytes, at most %d allowed", n, MaxExecArgBytes)
	}
	if r.Timeout < 0 || (r.Timeout > 0 && r.Timeout < time.Millisecond) || r.Timeout > MaxExecTimeout {
		return fmt.Errorf("exec timeout %v outside [1ms, %v]", r.Timeout, MaxExecTimeout)
	}
	if len(r.Stdin) > MaxExecStdin {
		return fmt.Errorf("exec stdin is %d bytes, at most %d allowed", len(r.Stdin), MaxExecStdin)
	}
	return nil
}

func checkArgv(argv []string) error {
	if len(argv) == 0 {
		return errors.New("exec argv is empty")
	}
	if len(argv) > MaxExecArgs {
		return fmt.Errorf("exec argv has %d entries, at most %d allowed", len(argv), MaxExecArgs)
	}
	name := argv[0]
	if name == "" {
		return errors.New("exec argv[0] is empty")
	}
	if !strings.HasPrefix(name, "/") && strings.Contains(name, "/") {
		return fmt.Errorf("exec argv[0] %q: neither an absolute path nor a command name", clipForError(name))
	}
	for _, a := range argv {
		if err := checkExecText("argv", a); err != nil {
			return err
		}
	}
	return nil
}

func checkEnv(env []string) error {
	if len(env) > MaxExecEnv {
		return fmt.Errorf("exec env has %d entries, at most %d allowed", len(env), MaxExecEnv)
	}
	for _, kv := range env {
		if strings.IndexByte(kv, '=') < 1 {
			return fmt.Errorf("exec env entry %q is not KEY=value", clipForError(kv))
		}
		if err := checkExecText("env", kv); err != nil {
			return err
		}
	}
	return nil
}

// checkExecText rejects what cannot be passed to execve (NUL) or through
// JSON unchanged (invalid UTF-8).
func checkExecText(field, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("exec %s contains a NUL byte", field)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("exec %s is not valid UTF-8", field)
	}
	return nil
}

func argBytes(r ExecRequest) int {
	n := len(r.Dir)
	for _, s := range r.Argv {
		n += len(s)
	}
	for _, s := range r.Env {
		n += len(s)
	}
	return n
}

// ExecResult is the body of the result of an exec (guest → host). On the
// wire the duration is duration_ms, and stdout and stderr are base64
// (stdout_b64, stderr_b64), so that any bytes survive.
//
// A command that could not be started (not found, bad dir, too many
// running) is not an ExecResult: the result carries an error instead.
type ExecResult struct {
	// ExitCode is the command's exit status, or -1 if a signal ended it
	// (including a timeout).
	ExitCode int
	// Signal names the signal that ended the command (e.g. "SIGKILL"), or
	// is empty.
	Signal string
	// TimedOut means the timeout passed and the process group was killed.
	TimedOut bool
	// Stdout and Stderr are at most MaxExecOutput bytes each; the
	// truncated flags say whether more was written and discarded.
	Stdout          []byte
	Stderr          []byte
	StdoutTruncated bool
	StderrTruncated bool
	// Duration is how long the command ran.
	Duration time.Duration
}

type execResultWire struct {
	ExitCode        int    `json:"exit_code"`
	Signal          string `json:"signal,omitempty"`
	TimedOut        bool   `json:"timed_out"`
	Stdout          []byte `json:"stdout_b64"`
	Stderr          []byte `json:"stderr_b64"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	DurationMS      int64  `json:"duration_ms"`
}

// MarshalJSON implements json.Marshaler.
func (r ExecResult) MarshalJSON() ([]byte, error) {
	w := execResultWire{
		ExitCode: r.ExitCode, Signal: r.Signal, TimedOut: r.TimedOut,
		Stdout: r.Stdout, Stderr: r.Stderr,
		StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated,
		DurationMS: r.Duration.Milliseconds(),
	}
	if w.Stdout == nil {
		w.Stdout = []byte{}
	}
	if w.Stderr == nil {
		w.Stderr = []byte{}
	}
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *ExecResult) UnmarshalJSON(b []byte) error {
	var w execResultWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.DurationMS < 0 || w.DurationMS > maxUptime*1000 {
		return fmt.Errorf("duration_ms %d out of range", w.DurationMS)
	}
	*r = ExecResult{
		ExitCode: w.ExitCode, Signal: w.Signal, TimedOut: w.TimedOut,
		Stdout: w.Stdout, Stderr: w.Stderr,
		StdoutTruncated: w.StdoutTruncated, StderrTruncated: w.StderrTruncated,
		Duration: time.Duration(w.DurationMS) * time.Millisecond,
	}
	return nil
}

// Validate checks a result received from the guest.
func (r ExecResult) Validate() error {
	switch {
	case r.ExitCode < -1 || r.ExitCode > 255:
		return fmt.Errorf("%w: exit code %d out of range", ErrProtocol, r.ExitCode)
	case r.TimedOut && r.ExitCode != -1:
		return fmt.Errorf("%w: timed out with exit code %d", ErrProtocol, r.ExitCode)
	case len(r.Signal) > maxSignalName || !utf8.ValidString(r.Signal):
		return fmt.Errorf("%w: bad signal name", ErrProtocol)
	case len(r.Stdout) > MaxExecOutput || len(r.Stderr) > MaxExecOutput:
		return fmt.Errorf("%w: output of %d and %d bytes, at most %d allowed", ErrProtocol, len(r.Stdout), len(r.Stderr), MaxExecOutput)
	}
	return nil
}

// ErrNoAnswer is a request the guest did not answer within the time its
// own terms allow (an exec: its timeout and execAnswerGrace).
var ErrNoAnswer = errors.New("the guest agent did not answer in time")

// execAnswerGrace is how long after an exec's timeout its answer may take:
// the guest kills the command's process group at the timeout, then
// answers.
var execAnswerGrace = 15 * time.Second

// Exec runs a command in the guest and returns its result. The request is
// validated first (a zero Timeout means DefaultExecTimeout). A command that
// could not be started yields a *RemoteError. ctx bounds only the wait on
// the host: cancelling it returns at once, while the command runs on until
// it ends or its timeout kills it. A guest that has not answered by the
// command's timeout and a grace is not waited for: ErrNoAnswer.
func (s *Session) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	req = req.WithDefaults()
	if err := req.Validate(); err != nil {
		return ExecResult{}, fmt.Errorf("agentapi: %s: %w", TypeExec, err)
	}
	var res ExecResult
	cctx, cancel := context.WithTimeoutCause(ctx, req.Timeout+execAnswerGrace, ErrNoAnswer)
	defer cancel()
	if err := s.call(cctx, TypeExec, req, &res); err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(cctx), ErrNoAnswer) {
			return ExecResult{}, fmt.Errorf("agentapi: %s: %w (within %s of its %s timeout)", TypeExec, ErrNoAnswer, execAnswerGrace, req.Timeout)
		}
		return ExecResult{}, err
	}
	if err := res.Validate(); err != nil {
		return ExecResult{}, fmt.Errorf("agentapi: %s: %w", TypeExec, err)
	}
	return res, nil
}
