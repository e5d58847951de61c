package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vmm"
)

// AgentAPIDialer connects to guest agents with the agentapi protocol over
// the VM's host-side Unix socket (after Firecracker's vsock handshake when
// the handle asks for it).
type AgentAPIDialer struct{}

var (
	_ AgentDialer = AgentAPIDialer{}
	_ DataDialer  = AgentAPIDialer{}
)

// DialData implements DataDialer with vmm.DialData. A VM whose handle
// names no data channel (started by an older hearth) is a conflict: it
// has to be restarted for processes and files.
func (AgentAPIDialer) DialData(ctx context.Context, h vmm.Handle) (net.Conn, error) {
	conn, err := vmm.DialData(ctx, h)
	if errors.Is(err, vmm.ErrNoDataChannel) {
		return nil, errdefs.Conflictf("%s", vmm.ErrNoDataChannel)
	}
	return conn, err
}

// HasDataChannel says whether h names a data channel (a VM started by an
// older hearth has none, and Manager.Work says so without dialing).
func (AgentAPIDialer) HasDataChannel(h vmm.Handle) bool { return h.DataSocket != "" }

// Connect implements AgentDialer.
func (AgentAPIDialer) Connect(ctx context.Context, h vmm.Handle, token []byte, cfg AgentConfig) (AgentSession, AgentHello, error) {
	conn, err := vmm.DialAgent(ctx, h)
	if err != nil {
		return nil, AgentHello{}, err
	}
	acfg := agentapi.Config{RequiredPorts: cfg.RequiredPorts, HeartbeatInterval: cfg.Heartbeat, Limits: cfg.Limits}
	if n := cfg.Network; n != nil {
		acfg.Network = &agentapi.NetworkConfig{MAC: n.MAC, Address: n.Address, Gateway: n.Gateway, DNS: n.DNS}
	}
	s, err := agentapi.Handshake(ctx, conn, token, acfg)
	if err != nil {
		conn.Close()
		return nil, AgentHello{}, fmt.Errorf("agent handshake: %w", err)
	}
	a := &agentSession{s: s, events: make(chan AgentEvent, 32)}
	go a.relay()
	hello := s.Hello()
	return a, AgentHello{Version: hello.AgentVersion, BootTime: hello.BootTime}, nil
}

// agentSession adapts *agentapi.Session to AgentSession.
type agentSession struct {
	s      *agentapi.Session
	events chan AgentEvent
}

func (a *agentSession) relay() {
	defer close(a.events)
	for {
		select {
		case e, ok := <-a.s.Events():
			if !ok {
				return
			}
			select {
			case a.events <- AgentEvent{Type: e.Type, Port: e.Port, Error: e.Error, At: e.At}:
			case <-a.s.Done():
				return
			}
		case <-a.s.Done():
			return
		}
	}
}

func (a *agentSession) Events() <-chan AgentEvent { return a.events }

// agentRequest is req in the agent protocol's terms.
func (req ExecRequest) agentRequest() agentapi.ExecRequest {
	return agentapi.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Dir, Timeout: req.Timeout, Stdin: req.Stdin}
}

// Validate checks req with the agent protocol's own rules (the ones the
// guest applies too), as an ErrInvalid whose message names the field.
func (req ExecRequest) Validate() error {
	if err := req.agentRequest().Validate(); err != nil {
		return errdefs.Invalidf("%s", strings.TrimPrefix(err.Error(), "exec "))
	}
	return nil
}

func (a *agentSession) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	r, err := a.s.Exec(ctx, req.agentRequest())
	var remote *agentapi.RemoteError
	if errors.As(err, &remote) {
		// The guest could not start it (not found, bad dir, too busy):
		// the caller's mistake or a busy guest, said by the guest.
		return ExecResult{}, errdefs.Invalidf("guest: %s", remote.Message)
	}
	if err != nil && ctx.Err() == nil {
		if a.s.Err() != nil {
			// The guest went away (rebooted, crashed, broke the
			// protocol) while the command was in flight.
			return ExecResult{}, fmt.Errorf("%w: %w", errdefs.Unavailablef(
				"the guest agent's session ended before the command's result arrived; whether it ran is unknown"), err)
		}
		if errors.Is(err, agentapi.ErrNoAnswer) {
			return ExecResult{}, fmt.Errorf("%w: %w", errdefs.Unavailablef(
				"the guest agent did not answer within the command's timeout and a grace; whether it ran is unknown"), err)
		}
		if errors.Is(err, agentapi.ErrProtocol) || errors.Is(err, agentapi.ErrMalformed) {
			return ExecResult{}, fmt.Errorf("%w: %w", errdefs.Unavailablef("the guest agent sent an invalid exec result"), err)
		}
	}
	if err != nil {
		return ExecResult{}, err
	}
	return ExecResult{ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr, StdoutTruncated: r.StdoutTruncated,
		StderrTruncated: r.StderrTruncated, TimedOut: r.TimedOut, Duration: r.Duration}, nil
}

func (a *agentSession) Login(ctx context.Context, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error) {
	return a.s.Login(ctx, req, progress)
}

func (a *agentSession) WriteFile(ctx context.Context, req agentapi.WriteFileRequest) error {
	return a.s.WriteFile(ctx, req)
}

func (a *agentSession) Shutdown(ctx context.Context) error { return a.s.Shutdown(ctx) }
func (a *agentSession) Done() <-chan struct{}              { return a.s.Done() }
func (a *agentSession) Err() error                         { return a.s.Err() }
func (a *agentSession) Close() error                       { return a.s.Close() }
