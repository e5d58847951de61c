package network

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Slot is one VM's network identity as the firewall sees it: the TAP it
// sends from, the MAC and IPv4 address it may use there, and its egress
// policy.
type Slot struct {
	VMID   string
	TAP    string
	MAC    net.HardwareAddr
	IP     netip.Addr
	Egress EgressPolicy
}

// validate checks one slot against the configuration.
func (s Slot) validate(c Config) error {
	if err := checkVMID(s.VMID); err != nil {
		return err
	}
	if !strings.HasPrefix(s.TAP, c.TAPPrefix) || len(s.TAP) == len(c.TAPPrefix) {
		return fmt.Errorf("tap %q must start with network.tap_prefix %q", s.TAP, c.TAPPrefix)
	}
	if err := checkIfName(s.TAP); err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	if len(s.MAC) != 6 || s.MAC[0]&0x01 != 0 {
		return fmt.Errorf("mac %q must be a 6-byte unicast address", s.MAC)
	}
	if err := checkSlotIP(c, s.IP); err != nil {
		return err
	}
	if err := s.Egress.Validate(); err != nil {
		return err
	}
	return nil
}

// checkSlotIP reports whether ip can be a guest's address in c's subnet.
func checkSlotIP(c Config, ip netip.Addr) error {
	switch {
	case !ip.Is4():
		return fmt.Errorf("ip %s must be an IPv4 address", ip)
	case !c.Subnet.Contains(ip):
		return fmt.Errorf("ip %s is outside network.subnet %s", ip, c.Subnet)
	case ip == c.Subnet.Masked().Addr():
		return fmt.Errorf("ip %s is the subnet's network address", ip)
	case ip == c.Gateway():
		return fmt.Errorf("ip %s is the gateway", ip)
	case ip == lastAddr(c.Subnet):
		return fmt.Errorf("ip %s is the subnet's broadcast address", ip)
	}
	return nil
}

// Broadcast returns the last address of an IPv4 prefix (its broadcast
// address), which is never a guest's.
func Broadcast(p netip.Prefix) netip.Addr { return lastAddr(p) }

// lastAddr is the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// normalizeSlots validates slots, rejects duplicates and returns a copy
// sorted by IP, so that the same set of slots always gives the same rules.
func normalizeSlots(c Config, slots []Slot) ([]Slot, error) {
	out := slices.Clone(slots)
	seen := map[string]string{} // "kind value" → vm id
	for _, s := range out {
		if err := s.validate(c); err != nil {
			return nil, fmt.Errorf("slot %q: %w", s.VMID, err)
		}
		for _, key := range []string{"vm id " + s.VMID, "tap " + s.TAP, "mac " + s.MAC.String(), "ip " + s.IP.String()} {
			if other, dup := seen[key]; dup {
				return nil, fmt.Errorf("slot %q: %s is also used by slot %q", s.VMID, key, other)
			}
			seen[key] = s.VMID
		}
	}
	slices.SortFunc(out, func(a, b Slot) int { return a.IP.Compare(b.IP) })
	return out, nil
}
