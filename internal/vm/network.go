package vm

import (
	"context"
	"encoding/json"
	"fmt"
)

// Egress says where a VM may open connections outside its subnet.
type Egress struct {
	Mode  string       `json:"mode"` // "open", "none" or "allowlist"
	Allow []EgressRule `json:"allow,omitempty"`
}

// EgressRule allows one destination in allowlist mode.
type EgressRule struct {
	CIDR     string `json:"cidr"`
	Protocol string `json:"protocol,omitempty"` // "", "tcp" or "udp"
	Port     int    `json:"port,omitempty"`     // 0 = any (needs a protocol otherwise)
}

// NetAttachment is a VM's place on the host network, persisted with the VM
// (store.VM.Network) so a restarted daemon rebuilds the same TAPs, leases
// and rules.
type NetAttachment struct {
	TAP     string   `json:"tap"`
	MAC     string   `json:"mac"`
	Address string   `json:"address"` // CIDR, e.g. 172.30.0.5/24
	Gateway string   `json:"gateway"`
	DNS     []string `json:"dns,omitempty"`
	Egress  Egress   `json:"egress"`
}

// Networker attaches VMs to the host network: address lease, TAP and
// firewall rules, as one idempotent step and its inverse.
type Networker interface {
	// ValidateEgress checks a policy before anything is created.
	ValidateEgress(e Egress) error
	// DefaultEgress is the policy of VMs that do not ask for one.
	DefaultEgress() Egress
	// Reserve leases the VM's address (idempotent) and returns it as CIDR.
	// A full pool is errdefs.ErrUnavailable.
	Reserve(ctx context.Context, vmID string) (string, error)
	// Attach leases an address, creates the TAP and installs the rules.
	// Calling it again for the same VM returns the same attachment.
	Attach(ctx context.Context, vmID string, egress Egress) (NetAttachment, error)
	// Detach removes the rules and the TAP and releases the address. Call
	// it only once the VM's process is gone. Detaching twice is fine.
	Detach(ctx context.Context, vmID string) error
	// Reconcile makes the host match exactly the given attachments:
	// rules rebuilt, TAPs and leases of anything else removed. An
	// attachment without a TAP (a VM that reserved its address but was not
	// attached yet) keeps only its lease.
	Reconcile(ctx context.Context, held map[string]NetAttachment) error
}

// attachmentOf decodes a VM's stored network attachment; ok is false for
// VMs without one.
func attachmentOf(raw []byte) (NetAttachment, bool, error) {
	if len(raw) == 0 {
		return NetAttachment{}, false, nil
	}
	var a NetAttachment
	if err := json.Unmarshal(raw, &a); err != nil {
		return NetAttachment{}, false, fmt.Errorf("decode vm network: %w", err)
	}
	return a, a.TAP != "", nil
}

// DecodeAttachment decodes a VM's stored network (store.VM.Network). Before
// the VM is attached it holds only the wanted egress policy.
func DecodeAttachment(raw []byte) (NetAttachment, error) {
	var a NetAttachment
	if err := json.Unmarshal(raw, &a); err != nil {
		return NetAttachment{}, fmt.Errorf("decode vm network: %w", err)
	}
	return a, nil
}
