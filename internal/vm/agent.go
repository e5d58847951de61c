package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// AgentAPIDialer connects to guest agents with the agentapi protocol over
// the VM's host-side Unix socket.
type AgentAPIDialer struct{}

var _ AgentDialer = AgentAPIDialer{}

// Connect implements AgentDialer.
func (AgentAPIDialer) Connect(ctx context.Context, socket string, token []byte, ports []int, heartbeat time.Duration) (AgentSession, AgentHello, error) {
	conn, err := agentapi.Dial(ctx, socket)
	if err != nil {
		return nil, AgentHello{}, err
	}
	s, err := agentapi.Handshake(ctx, conn, token, agentapi.Config{RequiredPorts: ports, HeartbeatInterval: heartbeat})
	if err != nil {
		conn.Close()
		return nil, AgentHello{}, fmt.Errorf("agent handshake: %w", err)
	}
	a := &agentSession{s: s, events: make(chan AgentEvent, 32)}
	go a.relay()
	h := s.Hello()
	return a, AgentHello{Version: h.AgentVersion, BootTime: h.BootTime}, nil
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
			case a.events <- AgentEvent{Type: e.Type, Port: e.Port, At: e.At}:
			case <-a.s.Done():
				return
			}
		case <-a.s.Done():
			return
		}
	}
}

func (a *agentSession) Events() <-chan AgentEvent          { return a.events }
func (a *agentSession) Shutdown(ctx context.Context) error { return a.s.Shutdown(ctx) }
func (a *agentSession) Done() <-chan struct{}              { return a.s.Done() }
func (a *agentSession) Close() error                       { return a.s.Close() }
