// Package vmnet attaches VMs to the host network as one idempotent step:
// an address lease (ipam, in the store), a TAP on the bridge and the
// firewall rules that express the VM's egress policy (network.Host), plus
// the inverse and a reconcile that makes the host match the store after a
// restart. It implements vm.Networker.
package vmnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/hearth-project/hearth/internal/network"
	"github.com/hearth-project/hearth/internal/network/ipam"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

// Service is the vm.Networker of a host.
type Service struct {
	host   *network.Host
	ipam   *ipam.Allocator
	leases store.Leases
	cfg    network.Config
	dns    []string
	egress vm.Egress

	mu    sync.Mutex
	slots map[string]network.Slot // every VM that holds its network
}

var _ vm.Networker = (*Service)(nil)

// New returns the service for host. dns is what guests are told to use;
// egress is the default policy, and the most a user key may ask for
// (vm.Egress.Within).
func New(host *network.Host, leases store.Leases, dns []string, defaultEgress vm.Egress) (*Service, error) {
	cfg := host.Config() // one source of truth: the host, defaults applied
	policy, err := toPolicy(defaultEgress)
	if err == nil {
		err = cfg.CheckEgress(policy, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("network.default_egress: %w", err)
	}
	alloc, err := ipam.New(leases, cfg.Subnet, cfg.Gateway())
	if err != nil {
		return nil, err
	}
	return &Service{host: host, ipam: alloc, leases: leases, cfg: cfg, dns: dns, egress: defaultEgress,
		slots: map[string]network.Slot{}}, nil
}

// toPolicy converts the API's egress description.
func toPolicy(e vm.Egress) (network.EgressPolicy, error) {
	p := network.EgressPolicy{Mode: e.Mode}
	for i, r := range e.Allow {
		cidr, err := netip.ParsePrefix(r.CIDR)
		if err != nil {
			if a, aerr := netip.ParseAddr(r.CIDR); aerr == nil {
				cidr = netip.PrefixFrom(a, a.BitLen())
			} else {
				return p, fmt.Errorf("allow[%d].cidr: %q is not a CIDR or address", i, r.CIDR)
			}
		}
		if r.Port < 0 || r.Port > 65535 {
			return p, fmt.Errorf("allow[%d].port: %d out of range", i, r.Port)
		}
		p.Allow = append(p.Allow, network.AllowRule{CIDR: cidr.Masked(), Protocol: r.Protocol, Port: uint16(r.Port)})
	}
	if err := p.Validate(); err != nil {
		return p, err
	}
	return p, nil
}

// ValidateEgress implements vm.Networker: the policy must be well formed
// and name no destination the host denies every VM (checked against the
// host's routes as the installed rules have them).
func (s *Service) ValidateEgress(e vm.Egress) error {
	p, err := toPolicy(e)
	if err != nil {
		return err
	}
	return s.cfg.CheckEgress(p, s.host.HostRoutes())
}

// DefaultEgress implements vm.Networker.
func (s *Service) DefaultEgress() vm.Egress { return s.egress }

// Reserve implements vm.Networker.
func (s *Service) Reserve(ctx context.Context, vmID string) (string, error) {
	ip, err := s.ipam.Allocate(ctx, vmID)
	if err != nil {
		return "", err
	}
	return netip.PrefixFrom(ip, s.cfg.Subnet.Bits()).String(), nil
}

// Attach implements vm.Networker.
func (s *Service) Attach(ctx context.Context, vmID string, e vm.Egress) (vm.NetAttachment, error) {
	policy, err := toPolicy(e)
	if err != nil {
		return vm.NetAttachment{}, err
	}
	ip, err := s.ipam.Allocate(ctx, vmID)
	if err != nil {
		return vm.NetAttachment{}, err
	}
	tap, err := s.host.CreateTAP(ctx, vmID)
	if err != nil {
		return vm.NetAttachment{}, errors.Join(fmt.Errorf("create tap: %w", err), s.ipam.Release(ctx, vmID))
	}
	slot := network.Slot{VMID: vmID, TAP: tap, MAC: network.MACFor(vmID), IP: ip, Egress: policy}
	if err := s.addSlot(ctx, slot); err != nil {
		// Undo all of it, rules too (a VM attached before keeps its old
		// ones when AddSlot fails), so that the VM ends detached.
		rerr := s.removeSlot(ctx, vmID)
		return vm.NetAttachment{}, errors.Join(err, rerr, s.host.DeleteTAP(ctx, tap), s.ipam.Release(ctx, vmID))
	}
	return s.attachment(slot, e), nil
}

func (s *Service) attachment(slot network.Slot, e vm.Egress) vm.NetAttachment {
	return vm.NetAttachment{
		TAP: slot.TAP, MAC: slot.MAC.String(),
		Address: netip.PrefixFrom(slot.IP, s.cfg.Subnet.Bits()).String(),
		Gateway: s.cfg.Gateway().String(), DNS: slices.Clone(s.dns), Egress: e,
	}
}

// addSlot installs a VM's rules (only its own, in one atomic step) and
// records its slot. On error neither changes.
func (s *Service) addSlot(ctx context.Context, slot network.Slot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.host.AddSlot(ctx, slot); err != nil {
		return fmt.Errorf("add rules: %w", err)
	}
	s.slots[slot.VMID] = slot
	return nil
}

// removeSlot deletes a VM's rules (only its own, in one atomic step; none
// is fine) and forgets its slot. On error neither changes.
func (s *Service) removeSlot(ctx context.Context, vmID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.host.RemoveSlot(ctx, vmID); err != nil {
		return fmt.Errorf("remove rules: %w", err)
	}
	delete(s.slots, vmID)
	return nil
}

// slotList lists slots by address, for a full rebuild.
func slotList(slots map[string]network.Slot) []network.Slot {
	out := make([]network.Slot, 0, len(slots))
	for _, sl := range slots {
		out = append(out, sl)
	}
	slices.SortFunc(out, func(a, b network.Slot) int { return a.IP.Compare(b.IP) })
	return out
}

// Detach implements vm.Networker: rules first (no traffic for the address),
// then the TAP, then the lease. Each step touches only this VM's objects.
func (s *Service) Detach(ctx context.Context, vmID string) error {
	if err := s.removeSlot(ctx, vmID); err != nil {
		return err
	}
	taps, err := s.host.TAPsOf(ctx, vmID)
	if err != nil {
		return fmt.Errorf("list taps: %w", err)
	}
	for _, name := range taps {
		if err := s.host.DeleteTAP(ctx, name); err != nil {
			return fmt.Errorf("delete tap %s: %w", name, err)
		}
	}
	return s.ipam.Release(ctx, vmID)
}

// Reconcile implements vm.Networker.
func (s *Service) Reconcile(ctx context.Context, held map[string]vm.NetAttachment) error {
	if err := s.host.Setup(ctx); err != nil {
		return fmt.Errorf("host network setup: %w", err)
	}
	slots := map[string]network.Slot{}
	leased := map[string]string{} // vm id -> address it keeps
	for id, a := range held {
		p, err := netip.ParsePrefix(a.Address)
		if err != nil {
			return fmt.Errorf("vm %s: stored address %q: %w", id, a.Address, err)
		}
		leased[id] = p.Addr().String()
		if a.TAP == "" {
			continue // reserved, not attached yet: keeps its lease only
		}
		slot, err := slotOf(id, a)
		if err != nil {
			return err
		}
		slots[id] = slot
	}
	s.mu.Lock()
	err := s.host.SyncRules(ctx, slotList(slots))
	if err == nil { // else the rules, all or nothing, are still the old slots'
		s.slots = slots
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("sync rules: %w", err)
	}
	taps, err := s.host.TAPs(ctx)
	if err != nil {
		return fmt.Errorf("list taps: %w", err)
	}
	for name, owner := range taps {
		if sl, ok := slots[owner]; !ok || sl.TAP != name {
			if err := s.host.DeleteTAP(ctx, name); err != nil {
				return fmt.Errorf("remove stray tap %s: %w", name, err)
			}
		}
	}
	leases, err := s.leases.ListLeases(ctx)
	if err != nil {
		return err
	}
	for _, l := range leases {
		if ip, ok := leased[l.VMID]; !ok || ip != l.IP {
			if err := s.leases.DeleteLease(ctx, l.VMID); err != nil {
				return fmt.Errorf("release stray lease %s: %w", l.IP, err)
			}
		}
	}
	return nil
}

func slotOf(vmID string, a vm.NetAttachment) (network.Slot, error) {
	p, err := netip.ParsePrefix(a.Address)
	if err != nil {
		return network.Slot{}, fmt.Errorf("vm %s: stored address %q: %w", vmID, a.Address, err)
	}
	policy, err := toPolicy(a.Egress)
	if err != nil {
		return network.Slot{}, fmt.Errorf("vm %s: stored egress: %w", vmID, err)
	}
	return network.Slot{VMID: vmID, TAP: a.TAP, MAC: network.MACFor(vmID), IP: p.Addr(), Egress: policy}, nil
}
