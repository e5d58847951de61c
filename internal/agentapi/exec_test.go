package agentapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExecRequestValidate(t *testing.T) {
	tests := []struct {
		name    string
		req     ExecRequest
		wantErr string // "" means valid
	}{
		{"absolute", ExecRequest{Argv: []string{"/bin/true"}}, ""},
		{"name in PATH", ExecRequest{Argv: []string{"sh", "-c", "exit 0"}, Env: []string{"A=", "B=c=d"}, Dir: "/tmp"}, ""},
		{"full", ExecRequest{Argv: []string{"cat"}, Timeout: MaxExecTimeout, Stdin: make([]byte, MaxExecStdin)}, ""},

		{"no argv", ExecRequest{}, "argv is empty"},
		{"empty argv0", ExecRequest{Argv: []string{""}}, "argv[0] is empty"},
		{"relative path", ExecRequest{Argv: []string{"bin/sh"}}, "neither an absolute path"},
		{"too many args", ExecRequest{Argv: make([]string, MaxExecArgs+1)}, "entries"},
		{"nul in arg", ExecRequest{Argv: []string{"echo", "a\x00b"}}, "NUL"},
		{"invalid utf-8", ExecRequest{Argv: []string{"echo", "\xff"}}, "UTF-8"},
		{"env without =", ExecRequest{Argv: []string{"env"}, Env: []string{"FOO"}}, "KEY=value"},
		{"env empty key", ExecRequest{Argv: []string{"env"}, Env: []string{"=x"}}, "KEY=value"},
		{"too many env", ExecRequest{Argv: []string{"env"}, Env: make([]string, MaxExecEnv+1)}, "entries"},
		{"relative dir", ExecRequest{Argv: []string{"pwd"}, Dir: "tmp"}, "not absolute"},
		{"args too large", ExecRequest{Argv: []string{"echo", strings.Repeat("x", MaxExecArgBytes)}}, "bytes"},
		{"negative timeout", ExecRequest{Argv: []string{"true"}, Timeout: -time.Second}, "timeout"},
		{"tiny timeout", ExecRequest{Argv: []string{"true"}, Timeout: time.Microsecond}, "timeout"},
		{"long timeout", ExecRequest{Argv: []string{"true"}, Timeout: MaxExecTimeout + time.Millisecond}, "timeout"},
		{"stdin too large", ExecRequest{Argv: []string{"cat"}, Stdin: make([]byte, MaxExecStdin+1)}, "stdin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestExecLineFits checks that the largest valid request and result, with
// the worst JSON escaping, fit in a line.
func TestExecLineFits(t *testing.T) {
	args := make([]string, MaxExecArgs)
	per := MaxExecArgBytes / MaxExecArgs
	for i := range args {
		args[i] = strings.Repeat("<", per) // escaped as \u003c: six bytes each
	}
	args[0] = "/bin/echo"
	req := ExecRequest{Argv: args, Timeout: MaxExecTimeout, Stdin: bytes.Repeat([]byte{0xff}, MaxExecStdin)}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	res := ExecResult{
		ExitCode: -1, Signal: "SIGKILL", TimedOut: true, Duration: MaxExecTimeout,
		Stdout: bytes.Repeat([]byte{0xff}, MaxExecOutput), Stderr: bytes.Repeat([]byte{0}, MaxExecOutput),
	}
	for _, m := range []struct {
		typ  string
		body any
	}{{TypeExec, req}, {TypeResult, res}} {
		env, err := NewMessage(m.typ, 1<<60, m.body)
		if err != nil {
			t.Fatal(err)
		}
		if err := NewEncoder(io.Discard).Encode(env); err != nil {
			t.Fatalf("%s: %v", m.typ, err)
		}
	}
}

func TestSessionExec(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	want := ExecResult{
		ExitCode: 3, Stdout: []byte("out\xff\x00"), Stderr: []byte("err"),
		StdoutTruncated: true, Duration: 1500 * time.Millisecond,
	}
	g.run(func() {
		env := g.expect(TypeExec)
		var req ExecRequest
		if err := env.DecodeBody(&req); err != nil {
			t.Error(err)
		}
		if strings.Join(req.Argv, " ") != "sh -c cat" || req.Timeout != DefaultExecTimeout ||
			string(req.Stdin) != "in\x00put" || req.Dir != "/tmp" || len(req.Env) != 1 {
			t.Errorf("guest got %+v", req)
		}
		g.send(TypeResult, env.ID, want)
	})
	got, err := s.Exec(ctxTimeout(t, 5*time.Second), ExecRequest{
		Argv: []string{"sh", "-c", "cat"}, Env: []string{"A=b"}, Dir: "/tmp", Stdin: []byte("in\x00put"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.ExitCode != 3 || !bytes.Equal(got.Stdout, want.Stdout) || string(got.Stderr) != "err" ||
		!got.StdoutTruncated || got.StderrTruncated || got.TimedOut || got.Duration != want.Duration {
		t.Fatalf("Exec = %+v, want %+v", got, want)
	}
}

func TestSessionExecErrors(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		env := g.expect(TypeExec)
		res, _ := NewResult(env.ID, nil, errors.New("exec: start /nope: no such file or directory"))
		g.enc.Encode(res)
		env = g.expect(TypeExec)
		g.send(TypeResult, env.ID, ExecResult{ExitCode: 300})
		env = g.expect(TypeExec)
		g.send(TypeResult, env.ID, ExecResult{Stdout: make([]byte, MaxExecOutput+1)})
		env = g.expect(TypeExec)
		g.send(TypeResult, env.ID, ExecResult{ExitCode: 0, TimedOut: true})
		env = g.expect(TypeExec)
		g.sendRaw(`{"v":1,"type":"result","id":` + strconv.FormatUint(env.ID, 10) + `,"body":{"stdout_b64":"!!"}}` + "\n")
		g.expect(TypeExec) // never answered
		io.Copy(io.Discard, g.conn)
	})
	ctx := ctxTimeout(t, 5*time.Second)
	run := func() error {
		_, err := s.Exec(ctx, ExecRequest{Argv: []string{"/nope"}})
		return err
	}
	var remote *RemoteError
	if err := run(); !errors.As(err, &remote) || remote.Request != TypeExec || !strings.Contains(remote.Message, "no such file") {
		t.Fatalf("Exec = %v, want a RemoteError", err)
	}
	for _, want := range []string{"exit code 300", "output", "timed out with exit code 0", "base64"} {
		if err := run(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Exec = %v, want ErrProtocol containing %q", err, want)
		}
	}

	// Cancelling ctx returns at once, and the session goes on.
	cctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := s.Exec(cctx, ExecRequest{Argv: []string{"sleep", "60"}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Exec = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancelled Exec returned after %v", d)
	}

	// An invalid request is refused without being sent.
	if _, err := s.Exec(ctx, ExecRequest{Argv: []string{"rel/path"}}); err == nil || errors.As(err, &remote) {
		t.Fatalf("invalid Exec = %v", err)
	}
	select {
	case <-s.Done():
		t.Fatalf("session ended: %v", s.Err())
	default:
	}
}

// A guest that takes an exec and never answers it is not waited for
// without end: past the command's timeout and a grace the call fails
// with ErrNoAnswer (not the caller's own deadline), and the session goes
// on.
func TestExecUnansweredIsNotWaitedForever(t *testing.T) {
	defer func(g time.Duration) { execAnswerGrace = g }(execAnswerGrace)
	execAnswerGrace = 200 * time.Millisecond
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		g.expect(TypeExec) // never answered
		ping := g.expect(TypePing)
		g.send(TypeResult, ping.ID, PingResult{GuestTime: time.Now()})
		_, _ = io.Copy(io.Discard, g.conn)
	})
	ctx := ctxTimeout(t, 30*time.Second)
	start := time.Now()
	_, err := s.Exec(ctx, ExecRequest{Argv: []string{"/bin/true"}, Timeout: 500 * time.Millisecond})
	if !errors.Is(err, ErrNoAnswer) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("unanswered exec after %s: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Fatalf("gave up after %s, before the command's timeout and the grace", d)
	}
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("the session after an unanswered exec: %v", err)
	}
}
