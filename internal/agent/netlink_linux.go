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
// addr's family except link-local ones, then adds (or refreshes) addr. An
// IPv6 address skips duplicate address detection, so that it is usable at
// once.
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
		if a.IPNet == nil || a.IP.IsLinkLocalUnicast() || sameIPNet(a.IPNet, want) {
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
