package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// execSession starts a guest and a configured session with it.
func execSession(t *testing.T, cfg agentapi.Config) *agentapi.Session {
	t.Helper()
	token := newToken(t)
	opts, _ := testOptions(t, token)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	return connectSession(t, host, token, cfg)
}

func TestExec(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	dir := t.TempDir()
	script := filepath.Join(dir, "hearth-test-cmd")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho from PATH\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		req        agentapi.ExecRequest
		code       int
		stdout     string
		stderr     string
		wantSignal string
	}{
		{"echo", agentapi.ExecRequest{Argv: []string{"/bin/echo", "hello", "world"}}, 0, "hello world\n", "", ""},
		{"looked up in PATH", agentapi.ExecRequest{Argv: []string{"echo", "hi"}}, 0, "hi\n", "", ""},
		{"PATH from env", agentapi.ExecRequest{Argv: []string{"hearth-test-cmd"}, Env: []string{"PATH=" + dir}}, 0, "from PATH\n", "", ""},
		{"exit code", agentapi.ExecRequest{Argv: []string{"sh", "-c", "exit 3"}}, 3, "", "", ""},
		{"stderr", agentapi.ExecRequest{Argv: []string{"sh", "-c", "echo oops >&2; exit 1"}}, 1, "", "oops\n", ""},
		{"env", agentapi.ExecRequest{Argv: []string{"sh", "-c", `printf %s "$FOO-$BAR"`}, Env: []string{"FOO=x", "BAR=1", "FOO=bar"}}, 0, "bar-1", "", ""},
		{"dir", agentapi.ExecRequest{Argv: []string{"pwd", "-P"}, Dir: dir}, 0, realDir + "\n", "", ""},
		{"stdin", agentapi.ExecRequest{Argv: []string{"cat"}, Stdin: []byte("line 1\nline 2\x00\xff")}, 0, "line 1\nline 2\x00\xff", "", ""},
		{"stdin unread", agentapi.ExecRequest{Argv: []string{"true"}, Stdin: bytes.Repeat([]byte("x"), agentapi.MaxExecStdin)}, 0, "", "", ""},
		{"no stdin", agentapi.ExecRequest{Argv: []string{"cat"}}, 0, "", "", ""},
		{"binary output", agentapi.ExecRequest{Argv: []string{"printf", `\377\000\200`}}, 0, "\xff\x00\x80", "", ""},
		{"argv[0] kept", agentapi.ExecRequest{Argv: []string{"sh", "-c", `printf %s "$0"`}}, 0, "sh", "", ""},
		{"signal", agentapi.ExecRequest{Argv: []string{"sh", "-c", "kill -TERM $$"}}, -1, "", "", "SIGTERM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Exec(ctxTimeout(t, 10*time.Second), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tt.code || string(res.Stdout) != tt.stdout || string(res.Stderr) != tt.stderr ||
				res.Signal != tt.wantSignal || res.TimedOut || res.StdoutTruncated || res.StderrTruncated {
				t.Fatalf("Exec = %+v (stdout %q, stderr %q), want exit %d, stdout %q, stderr %q, signal %q",
					res, res.Stdout, res.Stderr, tt.code, tt.stdout, tt.stderr, tt.wantSignal)
			}
			if res.Duration < 0 || res.Duration > 10*time.Second {
				t.Fatalf("duration %v", res.Duration)
			}
		})
	}
}

func TestExecTruncatesOutput(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	res, err := s.Exec(ctxTimeout(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"sh", "-c",
		"head -c 300000 /dev/zero | tr '\\0' a; head -c 300000 /dev/zero >&2; echo done >&2"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || !res.StdoutTruncated || !res.StderrTruncated ||
		len(res.Stdout) != agentapi.MaxExecOutput || len(res.Stderr) != agentapi.MaxExecOutput {
		t.Fatalf("exit %d, stdout %d bytes (truncated %v), stderr %d bytes (truncated %v)",
			res.ExitCode, len(res.Stdout), res.StdoutTruncated, len(res.Stderr), res.StderrTruncated)
	}
	if strings.Trim(string(res.Stdout), "a") != "" {
		t.Fatal("stdout is not the first bytes written")
	}
	// Exactly at the cap is not truncated.
	res, err = s.Exec(ctxTimeout(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(agentapi.MaxExecOutput), "/dev/zero"}})
	if err != nil || res.StdoutTruncated || len(res.Stdout) != agentapi.MaxExecOutput {
		t.Fatalf("at the cap: %d bytes, truncated %v, %v", len(res.Stdout), res.StdoutTruncated, err)
	}
}

// TestExecTimeoutKillsProcessGroup checks that a timeout kills the
// command's children too, not only the command.
func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	start := time.Now()
	res, err := s.Exec(ctxTimeout(t, 10*time.Second), agentapi.ExecRequest{
		Argv:    []string{"sh", "-c", "sleep 30 & echo $!; echo started >&2; wait"},
		Timeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode != -1 || res.Signal != "SIGKILL" || string(res.Stderr) != "started\n" {
		t.Fatalf("Exec = %+v, stderr %q; want timed out, exit -1, SIGKILL", res, res.Stderr)
	}
	// The sleeping child held stdout open: had it survived, Exec would
	// have waited execWaitDelay for it.
	if d := time.Since(start); d > execWaitDelay {
		t.Fatalf("Exec took %v", d)
	}
	if res.Duration < 300*time.Millisecond {
		t.Fatalf("duration %v, before the timeout", res.Duration)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("child pid %q: %v", res.Stdout, err)
	}
	waitGone(t, pid)
}

// waitGone waits until process pid has exited (a zombie counts).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		// pid (comm) state ...
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExecDoesNotBlock checks that heartbeats and other requests go on
// while a command runs.
func TestExecDoesNotBlock(t *testing.T) {
	const interval = 50 * time.Millisecond
	s := execSession(t, agentapi.Config{HeartbeatInterval: interval})
	expectEvent(t, s, agentapi.TypeReady)

	done := make(chan error, 1)
	go func() {
		_, err := s.Exec(context.Background(), agentapi.ExecRequest{Argv: []string{"sleep", "1"}})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond) // the command runs

	start := time.Now()
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("ping during exec took %v", d)
	}
	heartbeats := 0
	for {
		select {
		case ev := <-s.Events():
			if ev.Type == agentapi.TypeHeartbeat {
				heartbeats++
			}
			continue
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		}
		break
	}
	if heartbeats < 8 { // about 20 in a second
		t.Fatalf("%d heartbeats during a 1s exec, want about %d", heartbeats, time.Second/interval)
	}
}

// TestExecConcurrencyCap checks that at most maxConcurrentExecs commands
// run at once, and that slots come back.
func TestExecConcurrencyCap(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	const n = maxConcurrentExecs + 1
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Exec(ctxTimeout(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"sleep", "2"}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	var refused int
	for err := range errs {
		var remote *agentapi.RemoteError
		switch {
		case err == nil:
		case errors.As(err, &remote) && strings.Contains(remote.Message, "too many exec requests in progress (at most 8)"):
			refused++
		default:
			t.Fatal(err)
		}
	}
	if refused != 1 {
		t.Fatalf("%d of %d execs refused, want 1", refused, n)
	}
	if _, err := s.Exec(ctxTimeout(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"true"}}); err != nil {
		t.Fatalf("exec after the others finished: %v", err)
	}
}

func TestExecCannotStart(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	notExec := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  agentapi.ExecRequest
		want string
	}{
		{"no such file", agentapi.ExecRequest{Argv: []string{"/nonexistent/prog"}}, "exec: start /nonexistent/prog: fork/exec /nonexistent/prog: no such file or directory"},
		{"not in PATH", agentapi.ExecRequest{Argv: []string{"hearth-no-such-command"}}, "exec: hearth-no-such-command: executable file not found in $PATH"},
		{"not executable", agentapi.ExecRequest{Argv: []string{notExec}}, "permission denied"},
		{"no such dir", agentapi.ExecRequest{Argv: []string{"/bin/true"}, Dir: "/nonexistent"}, "exec: working directory: stat /nonexistent: no such file or directory"},
		{"dir not a directory", agentapi.ExecRequest{Argv: []string{"/bin/true"}, Dir: notExec}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Exec(ctxTimeout(t, 5*time.Second), tt.req)
			var remote *agentapi.RemoteError
			if !errors.As(err, &remote) || !strings.Contains(remote.Message, tt.want) {
				t.Fatalf("Exec = %v, want a remote error containing %q", err, tt.want)
			}
		})
	}
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("agent unwell after failed execs: %v", err)
	}
}

// TestExecEndsWithSession checks that a command still running when its
// session ends is killed.
func TestExecEndsWithSession(t *testing.T) {
	check := checkGoroutines(t)
	token := newToken(t)
	opts, _ := testOptions(t, token)
	host, guestConn := unixPair(t)
	g := startGuest(t, guestConn, token, opts)
	s := connectSession(t, host, token, agentapi.Config{HeartbeatInterval: time.Hour})

	pidFile := filepath.Join(t.TempDir(), "pid")
	go s.Exec(context.Background(), agentapi.ExecRequest{
		Argv: []string{"sh", "-c", `echo $$ > "$1.tmp" && mv "$1.tmp" "$1" && exec sleep 30`, "sh", pidFile},
	})
	var pid int
	for deadline := time.Now().Add(5 * time.Second); pid == 0; time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("command did not start")
		}
	}
	s.Close()
	if err := g.wait(t); !isDisconnect(err) {
		t.Fatalf("Serve = %v, want a disconnect", err)
	}
	waitGone(t, pid)
	check()
}

// TestRepliesStayInTheirSession checks that the reply to a request of an
// ended session is never written into the next one, whose request ids
// start again from 1.
func TestRepliesStayInTheirSession(t *testing.T) {
	token := newToken(t)
	opts, _ := testOptions(t, token)
	hostConn, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	h := newRawHost(t, hostConn)

	h.handshake(token, agentapi.Config{HeartbeatInterval: time.Hour})
	h.next(agentapi.TypeReady)
	h.send(agentapi.TypeExec, 1, agentapi.ExecRequest{Argv: []string{"sleep", "0.3"}})
	time.Sleep(50 * time.Millisecond)
	h.handshake(token, agentapi.Config{HeartbeatInterval: time.Hour}) // a new session
	h.next(agentapi.TypeReady)
	h.send(agentapi.TypePing, 2, struct{}{})
	if res := h.next(agentapi.TypeResult); res.ID != 2 {
		t.Fatalf("result for id %d, want the ping's (2)", res.ID)
	}
	// Give the killed command time to have answered, were it going to.
	h.send(agentapi.TypeExec, 3, agentapi.ExecRequest{Argv: []string{"sleep", "0.5"}})
	if res := h.next(agentapi.TypeResult); res.ID != 3 || res.Error != "" {
		t.Fatalf("result %+v, want the exec's (3)", res)
	}
}
