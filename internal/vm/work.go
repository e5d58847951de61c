package vm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
)

// DataDialer is implemented by AgentDialers whose guests serve the work
// API (package workapi) on a data channel: it connects to the host end of
// that channel. An AgentDialer without it gives VMs no work API.
type DataDialer interface {
	DialData(ctx context.Context, h vmm.Handle) (net.Conn, error)
}

// newWork returns the work API client of a VM whose supervisor holds h
// and token, or nil when the dialer has no data channels.
func (m *Manager) newWork(h vmm.Handle, token []byte) *workapi.Client {
	dd, ok := m.agents.(DataDialer)
	if !ok {
		return nil
	}
	if hc, ok := dd.(dataChannelChecker); ok && !hc.HasDataChannel(h) {
		return nil // a VM started by an older hearth: Work says so at once
	}
	return workapi.NewClient(func(ctx context.Context) (net.Conn, error) { return dd.DialData(ctx, h) }, token)
}

// dataChannelChecker is implemented by DataDialers that can tell from a
// handle whether its VM has a data channel at all; without it every VM
// is taken to have one.
type dataChannelChecker interface {
	HasDataChannel(h vmm.Handle) bool
}

// ErrNoDataChannel is in Work's error for a VM that has no data channel
// (its VMM gives it none): callers that have another way to do the work
// (exec over the control channel) may fall back on it.
var ErrNoDataChannel = errors.New("no data channel")

// Work returns the client of a ready VM's work API (processes and files,
// package workapi). Its connection is the VM's own, made on first use;
// callers must not close it.
func (m *Manager) Work(ctx context.Context, id string) (*workapi.Client, error) {
	if _, err := m.readySession(ctx, id, "processes and files"); err != nil {
		return nil, err
	}
	m.mu.Lock()
	inst := m.instances[id]
	m.mu.Unlock()
	var w *workapi.Client
	if inst != nil {
		w = inst.workClient()
	}
	if w == nil {
		return nil, fmt.Errorf("%w: %w", errdefs.Conflictf(
			"vm %s has no data channel for processes and files: restart it (a vm started by an older hearth has none)", id), ErrNoDataChannel)
	}
	return w, nil
}
