package agent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds retries of a netlink dump interrupted by a concurrent
// change.
const dumpRetries = 5

// netlinkOps is netOps through rtnetlink, in the network namespace of its
// handle.
type netlinkOps struct {
	h *netlink.Handle
}

// defaultNetOps works in the agent's own network namespace. The zero
// Handle opens a socket per request in the calling thread's namespace,
// which for the agent is always the guest's only one.
func defaultNetOps() netOps { return netlinkOps{h: &netlink.Handle{}} }

// LinkByMAC implements netOps. If several links share the address (VLANs
// on the NIC, say), the one with the lowest index, normally the NIC, wins.
func (o netlinkOps) LinkByMAC(mac net.HardwareAddr) (string, error) {
	links, err := o.linkList()
	if err != nil {
		return "", fmt.Errorf("list links: %w", err)
	}
	var found netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if bytes.Equal(a.HardwareAddr, mac) && (found == nil || a.Index < found.Attrs().Index) {
			found = l
		}
	}
	if found == nil {
		return "", fmt.Errorf("mac %s: %w", mac, errNoLink)
	}
	return found.Attrs().Name, nil
}

func (o netlinkOps) linkList() ([]netlink.Link, error) {
	for i := 0; ; i++ {
		links, err := o.h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return links, err
		}
	}
}

// LinkUp implements netOps.
func (o netlinkOps) LinkUp(name string) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	return o.h.LinkSetUp(l)
}

// SetMTU implements netOps.
func (o netlinkOps) SetMTU(name string, mtu int) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	if l.Attrs().MTU == mtu {
		return nil
	}
	return o.h.LinkSetMTU(l, mtu)
}

// ReplaceAddr implements netOps: it deletes the link's other addresses of
// addr's family except link-local ones (but mmdsLocalAddr, should an agent
// that died while reading MMDS have left it), then adds (or refreshes)
// addr. An IPv6 address skips duplicate address detection, so that it is
// usable at once.
func (o netlinkOps) ReplaceAddr(name string, addr netip.Prefix) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	family := netlink.FAMILY_V4
	if addr.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	existing, err := o.addrList(l, family)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	want := prefixIPNet(addr)
	for _, a := range existing {
		if a.IPNet == nil || sameIPNet(a.IPNet, want) {
			continue
		}
		if a.IP.IsLinkLocalUnicast() && !sameIPNet(a.IPNet, prefixIPNet(mmdsLocalAddr)) {
			continue
		}
		if err := o.h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %s: %w", a.IPNet, err)
		}
	}
	na := &netlink.Addr{IPNet: want}
	if family == netlink.FAMILY_V6 {
		na.Flags = unix.IFA_F_NODAD
	}
	return o.h.AddrReplace(l, na)
}

func (o netlinkOps) addrList(l netlink.Link, family int) ([]netlink.Addr, error) {
	for i := 0; ; i++ {
		addrs, err := o.h.AddrList(l, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return addrs, err
		}
	}
}

// ReplaceDefaultRoute implements netOps, in the main table.
func (o netlinkOps) ReplaceDefaultRoute(name string, gw netip.Addr) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if gw.Is6() {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return o.h.RouteReplace(&netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixIPNet(dst),
		Gw:        net.IP(gw.AsSlice()),
	})
}

// prefixIPNet converts p to a net.IPNet, keeping its host bits.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

func sameIPNet(a, b *net.IPNet) bool {
	return a.IP.Equal(b.IP) && bytes.Equal(a.Mask, b.Mask)
}

// FirstNIC implements netOps.
func (o netlinkOps) FirstNIC() (string, error) {
	links, err := o.linkList()
	if err != nil {
		return "", fmt.Errorf("list links: %w", err)
	}
	return firstNIC(links)
}

// firstNIC returns the name of the hardware Ethernet link with the lowest
// index. A hardware link has no link kind (netlink reports it as a
// "device"); virtual ones (ifb, veth, bridge, dummy, ...) have one, and
// may have a MAC address and a lower index than the NIC.
func firstNIC(links []netlink.Link) (string, error) {
	var found netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "device" || a.Flags&net.FlagLoopback != 0 || a.EncapType != "ether" ||
			len(a.HardwareAddr) != 6 || bytes.Equal(a.HardwareAddr, make(net.HardwareAddr, 6)) {
			continue
		}
		if found == nil || a.Index < found.Attrs().Index {
			found = l
		}
	}
	if found == nil {
		return "", fmt.Errorf("ethernet device: %w", errNoLink)
	}
	return found.Attrs().Name, nil
}

// IPv4Addrs implements netOps.
func (o netlinkOps) IPv4Addrs(name string) ([]netip.Prefix, error) {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	addrs, err := o.addrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(ip, ones))
		}
	}
	return out, nil
}

// AddLinkAddr implements netOps.
func (o netlinkOps) AddLinkAddr(name string, addr netip.Prefix) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	err = o.h.AddrAdd(l, &netlink.Addr{IPNet: prefixIPNet(addr), Scope: int(netlink.SCOPE_LINK)})
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// DelAddr implements netOps.
func (o netlinkOps) DelAddr(name string, addr netip.Prefix) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	err = o.h.AddrDel(l, &netlink.Addr{IPNet: prefixIPNet(addr)})
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

// AddLinkRoute implements netOps.
func (o netlinkOps) AddLinkRoute(name string, dst netip.Prefix) (bool, error) {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return false, err
	}
	err = o.h.RouteAdd(linkRoute(l, dst))
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	return err == nil, err
}

// DelLinkRoute implements netOps.
func (o netlinkOps) DelLinkRoute(name string, dst netip.Prefix) error {
	l, err := o.h.LinkByName(name)
	if err != nil {
		return err
	}
	err = o.h.RouteDel(linkRoute(l, dst))
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// linkRoute is a route to dst straight through l, in the main table.
func linkRoute(l netlink.Link, dst netip.Prefix) *netlink.Route {
	return &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixIPNet(dst), Scope: netlink.SCOPE_LINK}
}
