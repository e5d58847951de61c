package agentapi

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/safetext"
)

// Limits on a network configuration.
const (
	// MaxDNSServers bounds NetworkConfig.DNS: resolv.conf honours three
	// nameservers.
	MaxDNSServers = 3
	// MinMTU and MaxMTU bound a non-zero NetworkConfig.MTU; IPv6 needs at
	// least MinMTUIPv6.
	MinMTU     = 68
	MinMTUIPv6 = 1280
	MaxMTU     = 65535
	// MaxErrorText bounds the error texts the guest reports
	// (NetworkFailed.Error, NetworkReady.DNSError); the agent clips longer
	// ones.
	MaxErrorText = 1024

	maxIfaceName = 15 // IFNAMSIZ less the terminating NUL
)

// NetworkConfig tells the guest how to configure its network interface
// (host → guest, in Config). The agent applies it before probing ports.
type NetworkConfig struct {
	// MAC selects the guest NIC to configure, e.g. "02:ab:cd:00:00:05".
	MAC string `json:"mac"`
	// Address is the interface's address with its prefix length, e.g.
	// "172.30.0.5/24". It replaces every other address of its family on
	// the interface (link-local addresses are kept).
	Address string `json:"address"`
	// Gateway, if not empty, is the next hop of the default route. It must
	// be on-link: inside Address's prefix (or IPv6 link-local).
	Gateway string `json:"gateway,omitempty"`
	// DNS, if not empty, are the nameservers written to /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
	// MTU is the interface's MTU; 0 leaves it as it is.
	MTU int `json:"mtu,omitempty"`
}

// ParsedNetwork is a validated NetworkConfig.
type ParsedNetwork struct {
	MAC     net.HardwareAddr
	Address netip.Prefix // the interface address and prefix length
	Gateway netip.Addr   // the zero Addr when there is no default route
	DNS     []netip.Addr
	MTU     int
}

// Validate checks every field.
func (n NetworkConfig) Validate() error {
	_, err := n.Parse()
	return err
}

// Parse validates n and returns it parsed.
func (n NetworkConfig) Parse() (ParsedNetwork, error) {
	var p ParsedNetwork
	var err error
	if p.MAC, err = parseMAC(n.MAC); err != nil {
		return ParsedNetwork{}, err
	}
	if p.Address, err = parseInterfaceAddress(n.Address); err != nil {
		return ParsedNetwork{}, err
	}
	if p.Gateway, err = parseGateway(n.Gateway, p.Address); err != nil {
		return ParsedNetwork{}, err
	}
	if p.DNS, err = parseDNS(n.DNS); err != nil {
		return ParsedNetwork{}, err
	}
	if err := checkMTU(n.MTU, p.Address.Addr().Is6()); err != nil {
		return ParsedNetwork{}, err
	}
	p.MTU = n.MTU
	return p, nil
}

// parseMAC accepts a unicast EUI-48 address.
func parseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("network mac: %w", err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("network mac %q: not a 6-byte ethernet address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("network mac %q: multicast address", s)
	}
	if string(mac) == "\x00\x00\x00\x00\x00\x00" {
		return nil, fmt.Errorf("network mac %q: all zeros", s)
	}
	return mac, nil
}

// parseInterfaceAddress accepts a unicast host address with its prefix
// length, as in "172.30.0.5/24".
func parseInterfaceAddress(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("network address: %w", err)
	}
	a := p.Addr()
	if a.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("network address %q: IPv4-mapped IPv6 address", s)
	}
	if !a.IsGlobalUnicast() { // also rejects loopback, link-local, multicast, unspecified
		return netip.Prefix{}, fmt.Errorf("network address %q: not a global or private unicast address", s)
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("network address %q: prefix length 0", s)
	}
	if !isHostInPrefix(a, p) {
		return netip.Prefix{}, fmt.Errorf("network address %q: the subnet's network or broadcast address", s)
	}
	return p, nil
}

// parseGateway accepts an empty gateway, or an on-link unicast address of
// the same family as addr.
func parseGateway(s string, addr netip.Prefix) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	gw, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("network gateway: %w", err)
	}
	switch {
	case gw.Zone() != "" || gw.Is4In6():
		return netip.Addr{}, fmt.Errorf("network gateway %q: zones and IPv4-mapped addresses are not allowed", s)
	case gw.Is4() != addr.Addr().Is4():
		return netip.Addr{}, fmt.Errorf("network gateway %q: not of the address's family", s)
	case gw == addr.Addr():
		return netip.Addr{}, fmt.Errorf("network gateway %q: the interface's own address", s)
	case gw.Is6() && gw.IsLinkLocalUnicast():
		return gw, nil
	case !gw.IsGlobalUnicast():
		return netip.Addr{}, fmt.Errorf("network gateway %q: not a unicast address", s)
	case !addr.Contains(gw) || !isHostInPrefix(gw, addr):
		return netip.Addr{}, fmt.Errorf("network gateway %q: not a host of %s", s, addr.Masked())
	}
	return gw, nil
}

// parseDNS accepts at most MaxDNSServers distinct unicast addresses.
func parseDNS(servers []string) ([]netip.Addr, error) {
	if len(servers) > MaxDNSServers {
		return nil, fmt.Errorf("network dns: %d servers, at most %d allowed", len(servers), MaxDNSServers)
	}
	var out []netip.Addr
	for _, s := range servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("network dns: %w", err)
		}
		if a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("network dns %q: not a usable unicast address", s)
		}
		for _, o := range out {
			if o == a {
				return nil, fmt.Errorf("network dns: duplicate server %s", a)
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func checkMTU(mtu int, ipv6 bool) error {
	if mtu == 0 {
		return nil
	}
	lo := MinMTU
	if ipv6 {
		lo = MinMTUIPv6
	}
	if mtu < lo || mtu > MaxMTU {
		return fmt.Errorf("network mtu %d outside [%d, %d]", mtu, lo, MaxMTU)
	}
	return nil
}

// isHostInPrefix reports whether a is not the network address of p (host
// bits all zero) nor, for IPv4, its broadcast address (all ones). Point-to-
// point prefixes (/31, /32, /127, /128) have no such addresses.
func isHostInPrefix(a netip.Addr, p netip.Prefix) bool {
	hostBits := a.BitLen() - p.Bits()
	if hostBits < 2 {
		return true
	}
	b := a.AsSlice()
	zeros, ones := true, true
	for i := p.Bits(); i < a.BitLen(); i++ {
		bit := b[i/8] >> (7 - i%8) & 1
		zeros = zeros && bit == 0
		ones = ones && bit == 1
	}
	return !zeros && !(ones && a.Is4())
}

// NetworkReady reports that the guest applied the requested network
// (guest → host). It is sent before any port_ready.
type NetworkReady struct {
	Interface string `json:"interface"`         // the configured interface, e.g. "eth0"
	Address   string `json:"address"`           // as requested (CIDR)
	Gateway   string `json:"gateway,omitempty"` // as requested
	// DNSError says why /etc/resolv.conf could not be written (e.g. a
	// read-only root). It is not fatal.
	DNSError string `json:"dns_error,omitempty"`
}

// NetworkFailed reports that the guest could not apply the requested
// network (guest → host). The guest then sends no port_ready or ready in
// this session; it tries again when the host starts a new one.
type NetworkFailed struct {
	Error string `json:"error"`
}

// ReadyNetwork is the network part of a ready message.
type ReadyNetwork struct {
	Interface string `json:"interface"`
	Address   string `json:"address"`
}

// CheckInterfaceName reports whether name is a valid Linux interface name.
func CheckInterfaceName(name string) error {
	switch {
	case name == "" || len(name) > maxIfaceName:
		return fmt.Errorf("interface name %q: must be 1 to %d bytes", clipForError(name), maxIfaceName)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q: not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r\x00") || !utf8.ValidString(name):
		return fmt.Errorf("interface name %q: invalid character", name)
	}
	return nil
}

// checkErrorText validates an error text reported by the guest.
func checkErrorText(name, v string) error {
	if len(v) > MaxErrorText {
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrProtocol, name, len(v), MaxErrorText)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrProtocol, name)
	}
	return nil
}

// checkNetworkReady validates a network_ready against the request and
// returns the address it reports.
func checkNetworkReady(m NetworkReady, want ParsedNetwork) (netip.Prefix, error) {
	if err := CheckInterfaceName(m.Interface); err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if err := checkErrorText("dns_error", m.DNSError); err != nil {
		return netip.Prefix{}, err
	}
	addr, err := netip.ParsePrefix(m.Address)
	if err != nil || addr != want.Address {
		return netip.Prefix{}, fmt.Errorf("%w: network address %q, requested %s",
			ErrProtocol, clipForError(m.Address), want.Address)
	}
	var gw netip.Addr
	if m.Gateway != "" {
		gw, err = netip.ParseAddr(m.Gateway)
	}
	if err != nil || gw != want.Gateway {
		return netip.Prefix{}, fmt.Errorf("%w: network gateway %q, requested %q",
			ErrProtocol, clipForError(m.Gateway), addrString(want.Gateway))
	}
	return addr, nil
}

// addrString is a.String(), or "" for the zero Addr.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// clipForError shortens peer-supplied text quoted in an error.
func clipForError(s string) string {
	const n = 64
	if c := safetext.Clip(s, n); c != s {
		return c + "..."
	}
	return s
}
