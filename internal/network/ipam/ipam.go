// Package ipam hands out VM addresses from one subnet. Leases live in the
// store, whose uniqueness constraints make a double lease impossible even
// across processes and restarts; this package only chooses candidates.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/network"
	"github.com/hearth-project/hearth/internal/store"
)

// Allocator leases addresses of a subnet to VMs.
type Allocator struct {
	leases  store.Leases
	subnet  netip.Prefix
	gateway netip.Addr

	mu   sync.Mutex
	next netip.Addr // where the next search starts (round robin)
}

// New returns an allocator for subnet; gateway (the bridge's address), the
// network address and the broadcast address are never leased.
func New(leases store.Leases, subnet netip.Prefix, gateway netip.Addr) (*Allocator, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return nil, fmt.Errorf("ipam: subnet %s must be IPv4 with room for hosts (/30 or larger)", subnet)
	}
	if !subnet.Contains(gateway) {
		return nil, fmt.Errorf("ipam: gateway %s is outside %s", gateway, subnet)
	}
	return &Allocator{leases: leases, subnet: subnet, gateway: gateway, next: subnet.Addr().Next()}, nil
}

// Size is the number of leasable addresses.
func (a *Allocator) Size() int {
	return 1<<(32-a.subnet.Bits()) - 3 // network, broadcast, gateway
}

func (a *Allocator) usable(ip netip.Addr) bool {
	if !a.subnet.Contains(ip) || ip == a.subnet.Addr() || ip == a.gateway {
		return false
	}
	return ip != network.Broadcast(a.subnet)
}

// Allocate returns vmID's address, leasing one if it holds none. Addresses
// are searched round robin from the last one handed out, so a just-released
// address is not reused at once (stale ARP and conntrack entries). A full
// pool is ErrUnavailable.
func (a *Allocator) Allocate(ctx context.Context, vmID string) (netip.Addr, error) {
	if l, err := a.leases.GetLease(ctx, vmID); err == nil {
		return netip.ParseAddr(l.IP)
	} else if !errors.Is(err, store.ErrNotFound) {
		return netip.Addr{}, err
	}
	held, err := a.held(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	a.mu.Lock()
	start := a.next
	a.mu.Unlock()
	ip := start
	for range 1 << (32 - a.subnet.Bits()) {
		if a.usable(ip) && !held[ip] {
			err := a.leases.CreateLease(ctx, store.Lease{IP: ip.String(), VMID: vmID, CreatedAt: time.Now().UTC()})
			switch {
			case err == nil:
				a.mu.Lock()
				a.next = a.wrap(ip.Next())
				a.mu.Unlock()
				return ip, nil
			case errors.Is(err, store.ErrConflict):
				// Someone took it meanwhile, or this VM got a lease from a
				// concurrent call: settle on what the store says.
				if l, gerr := a.leases.GetLease(ctx, vmID); gerr == nil {
					return netip.ParseAddr(l.IP)
				}
				held[ip] = true
			default:
				return netip.Addr{}, err
			}
		}
		ip = a.wrap(ip.Next())
	}
	return netip.Addr{}, errdefs.Unavailablef("no free address in %s: all %d are leased", a.subnet, a.Size())
}

func (a *Allocator) wrap(ip netip.Addr) netip.Addr {
	if !a.subnet.Contains(ip) {
		return a.subnet.Addr()
	}
	return ip
}

func (a *Allocator) held(ctx context.Context) (map[netip.Addr]bool, error) {
	ls, err := a.leases.ListLeases(ctx)
	if err != nil {
		return nil, err
	}
	held := make(map[netip.Addr]bool, len(ls))
	for _, l := range ls {
		if ip, err := netip.ParseAddr(l.IP); err == nil {
			held[ip] = true
		}
	}
	return held, nil
}

// Release gives vmID's address back. Call it only once the VM's process is
// gone.
func (a *Allocator) Release(ctx context.Context, vmID string) error {
	return a.leases.DeleteLease(ctx, vmID)
}
