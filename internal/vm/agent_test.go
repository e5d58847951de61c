package vm_test

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
)

// scriptedGuest accepts one agent connection on a Unix socket, proves
// token, reads the host's config and then runs onRequest on the first
// request that is not a ping.
func scriptedGuest(t *testing.T, token []byte, onRequest func(conn net.Conn, enc *agentapi.Encoder, req agentapi.Envelope)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		enc, dec := agentapi.NewEncoder(conn), agentapi.NewDecoder(conn)
		env, err := dec.Decode()
		if err != nil || env.Type != agentapi.TypeChallenge {
			t.Errorf("guest: want a challenge, got %v %v", env.Type, err)
			return
		}
		var c agentapi.Challenge
		if err := env.DecodeBody(&c); err != nil {
			t.Error(err)
			return
		}
		nonce, err := c.DecodeNonce()
		if err != nil {
			t.Error(err)
			return
		}
		hello, err := agentapi.NewMessage(agentapi.TypeHello, 0, agentapi.Hello{
			Protocol: agentapi.ProtocolVersion, AgentVersion: "scripted", BootTime: time.Now().Add(-time.Minute).UTC(),
			UptimeSeconds: 60, Hostname: "guest", Kernel: "6.1", Nonce: c.Nonce, Proof: agentapi.Proof(token, nonce)})
		if err != nil {
			t.Error(err)
			return
		}
		if err := enc.Encode(hello); err != nil {
			t.Error(err)
			return
		}
		for {
			env, err := dec.Decode()
			if err != nil {
				return
			}
			if env.Type == agentapi.TypeConfig || env.Type == agentapi.TypePing {
				continue
			}
			onRequest(conn, enc, env)
			return
		}
	}()
	return path
}

func connect(t *testing.T, path string, token []byte) vm.AgentSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, _, err := vm.AgentAPIDialer{}.Connect(ctx, vmm.Handle{AgentSocket: path}, token, vm.AgentConfig{Heartbeat: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// A guest whose agent goes away while a command runs answers unavailable
// (a 503 with a reason), not an internal error.
func TestExecWhenTheAgentSessionIsLost(t *testing.T) {
	token := []byte("0123456789abcdef0123456789abcdef")
	path := scriptedGuest(t, token, func(conn net.Conn, _ *agentapi.Encoder, req agentapi.Envelope) {
		if req.Type != agentapi.TypeExec {
			t.Errorf("guest: got %s, want exec", req.Type)
		}
		conn.Close() // the guest rebooted
	})
	sess := connect(t, path, token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := sess.Exec(ctx, vm.ExecRequest{Argv: []string{"sleep", "60"}, Timeout: time.Minute})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "session ended") {
		t.Fatalf("exec while the session is lost: %v (public %q)", err, errdefs.Public(err))
	}
}

// A guest that answers an exec with a result that breaks the protocol is
// unavailable too, with its own reason.
func TestExecWithAnInvalidResult(t *testing.T) {
	token := []byte("0123456789abcdef0123456789abcdef")
	path := scriptedGuest(t, token, func(conn net.Conn, enc *agentapi.Encoder, req agentapi.Envelope) {
		res, err := agentapi.NewResult(req.ID, agentapi.ExecResult{ExitCode: 999}, nil)
		if err != nil {
			t.Error(err)
			return
		}
		if err := enc.Encode(res); err != nil {
			t.Error(err)
		}
		time.Sleep(time.Second) // keep the session up while the host reads it
	})
	sess := connect(t, path, token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := sess.Exec(ctx, vm.ExecRequest{Argv: []string{"true"}})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "invalid exec result") {
		t.Fatalf("exec with an invalid result: %v (public %q)", err, errdefs.Public(err))
	}
}

// A guest that takes an exec and never answers it: past the command's
// timeout and the protocol's grace the exec is unavailable with a reason,
// not a request held for as long as its client waits, nor a 500.
func TestExecNeverAnswered(t *testing.T) {
	token := []byte("0123456789abcdef0123456789abcdef")
	path := scriptedGuest(t, token, func(conn net.Conn, _ *agentapi.Encoder, req agentapi.Envelope) {
		_, _ = io.Copy(io.Discard, conn) // reads on, answers nothing
	})
	sess := connect(t, path, token)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	_, err := sess.Exec(ctx, vm.ExecRequest{Argv: []string{"true"}, Timeout: time.Millisecond})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "did not answer") || ctx.Err() != nil {
		t.Fatalf("an exec never answered, after %s: %v (public %q)", time.Since(start).Round(time.Second), err, errdefs.Public(err))
	}
}

// TestDialDataOfAnOlderVM: a VM whose handle names no data channel is a
// conflict (restart it), not an error of the host's.
func TestDialDataOfAnOlderVM(t *testing.T) {
	_, err := vm.AgentAPIDialer{}.DialData(t.Context(), vmm.Handle{AgentSocket: "/vms/a/agent.sock"})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("DialData of a handle without a data channel: %v; want a conflict saying to restart the VM", err)
	}
}

func TestDialDataReachesTheDataSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("guest"))
			c.Close()
		}
	}()
	c, err := vm.AgentAPIDialer{}.DialData(t.Context(), vmm.Handle{DataSocket: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || string(b) != "guest" {
		t.Fatalf("read %q %v from the data socket", b, err)
	}
}
