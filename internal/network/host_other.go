//go:build !linux

package network

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// errUnsupported is returned by every Host operation off Linux.
var errUnsupported = errors.New("host networking is only supported on linux")

// Host manages the host side of VM networking. Only Linux is supported.
type Host struct{ cfg Config }

// NewHost fails off Linux.
func NewHost(cfg Config, opts ...Option) (*Host, error) { return nil, errUnsupported }

// Config returns the Host's configuration.
func (h *Host) Config() Config { return h.cfg }

// Close does nothing.
func (h *Host) Close() error { return nil }

// Setup fails off Linux.
func (h *Host) Setup(ctx context.Context) error { return errUnsupported }

// Check reports that host networking is unsupported.
func (h *Host) Check(ctx context.Context) []Problem {
	return []Problem{{Check: "network", Message: errUnsupported.Error(), Fix: "run hearth on linux"}}
}

// Teardown fails off Linux.
func (h *Host) Teardown(ctx context.Context) error { return errUnsupported }

// CreateTAP fails off Linux.
func (h *Host) CreateTAP(ctx context.Context, vmID string) (string, error) {
	return "", errUnsupported
}

// DeleteTAP fails off Linux.
func (h *Host) DeleteTAP(ctx context.Context, name string) error { return errUnsupported }

// TAPsOf fails off Linux.
func (h *Host) TAPsOf(ctx context.Context, vmID string) ([]string, error) {
	return nil, errUnsupported
}

// TAPs fails off Linux.
func (h *Host) TAPs(ctx context.Context) (map[string]string, error) { return nil, errUnsupported }

// SyncRules fails off Linux.
func (h *Host) SyncRules(ctx context.Context, slots []Slot) error { return errUnsupported }

// AddSlot fails off Linux.
func (h *Host) AddSlot(ctx context.Context, s Slot) error { return errUnsupported }

// RemoveSlot fails off Linux.
func (h *Host) RemoveSlot(ctx context.Context, vmID string) error { return errUnsupported }

// HostRoutes returns nothing off Linux.
func (h *Host) HostRoutes() []netip.Prefix { return nil }

// RefreshHostRoutes fails off Linux.
func (h *Host) RefreshHostRoutes(ctx context.Context) (bool, error) { return false, errUnsupported }

// WatchHostRoutes returns at once off Linux.
func (h *Host) WatchHostRoutes(ctx context.Context, interval time.Duration, report func(error)) {}
