package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host manages the host side of VM networking in one network namespace:
// the bridge, the VMs' TAPs and hearth's nftables tables. Its methods are
// safe for concurrent use.
type Host struct {
	cfg Config
	ns  netns.NsHandle // not open: the current namespace
	nl  *netlink.Handle

	tapMu sync.Mutex     // serializes TAP creation and deletion
	nftMu sync.Mutex     // serializes nftables changes; guards nft
	nft   *nftables.Conn // lasting connection for small batches, opened when first needed
	// routes are the host routes the installed host_routes chain
	// denies; nil until this Host installed its rules. Written under
	// nftMu.
	routes atomic.Pointer[[]netip.Prefix]
}

// NewHost returns a Host for cfg (zero fields take their defaults). Close
// it when done.
func NewHost(cfg Config, opts ...Option) (*Host, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	var (
		nl  *netlink.Handle
		err error
	)
	if o.ns.IsOpen() {
		nl, err = netlink.NewHandleAt(o.ns)
	} else {
		nl, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return &Host{cfg: cfg, ns: o.ns, nl: nl}, nil
}

// Config returns the Host's configuration, defaults applied.
func (h *Host) Config() Config { return h.cfg }

// Close releases the Host's netlink sockets. It changes nothing on the host.
func (h *Host) Close() error {
	h.nl.Close()
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	if h.nft == nil {
		return nil
	}
	err := h.nft.CloseLasting()
	h.nft = nil
	if err != nil {
		return fmt.Errorf("close nftables connection: %w", err)
	}
	return nil
}

// Setup makes the host ready for VMs, idempotently: the bridge exists with
// address Gateway()/prefix and is up, IPv4 forwarding is on, and hearth's
// nftables tables exist. Existing tables are left as they are, so running
// VMs keep their rules across a daemon restart; if they are missing, the
// zero-slot baseline is installed. Call SyncRules afterwards.
func (h *Host) Setup(ctx context.Context) error {
	steps := []struct {
		name string
		run  func() error
	}{
		{"bridge", h.ensureBridge},
		{"ip_forward", func() error { return writeSysctl(h.ns, ipForwardPath, "1") }},
		{"nftables", h.ensureTables},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
		if err := s.run(); err != nil {
			return fmt.Errorf("network setup: %s: %w", s.name, err)
		}
	}
	return nil
}

// Check reports what is wrong with the host network, each problem with a
// fix, for `hearth doctor`. It changes nothing. No problems: nil.
func (h *Host) Check(ctx context.Context) []Problem {
	var ps []Problem
	for _, check := range []func() []Problem{h.checkBridge, h.checkForwarding, h.checkTables} {
		if ctx.Err() != nil {
			return append(ps, Problem{Check: "network", Message: ctx.Err().Error(), Fix: "run the check again"})
		}
		ps = append(ps, check()...)
	}
	return ps
}

// Teardown removes hearth's nftables tables, every hearth TAP and the
// bridge. It leaves IPv4 forwarding as it is (something else may need it).
// For tests and uninstalling; running VMs lose their network.
func (h *Host) Teardown(ctx context.Context) error {
	var errs []error
	if err := h.deleteTables(); err != nil {
		errs = append(errs, err)
	}
	taps, err := h.TAPs(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for name := range taps {
		if err := h.DeleteTAP(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := h.deleteBridge(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	return nil
}

// bridge returns hearth's bridge, nil if it does not exist, or an error if
// a link of that name exists but is not hearth's bridge.
func (h *Host) bridge() (netlink.Link, error) {
	link, err := h.nl.LinkByName(h.cfg.Bridge)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s: %w", h.cfg.Bridge, err)
	}
	if !h.ownsBridge(link) {
		a := link.Attrs()
		return nil, fmt.Errorf("link %s (type %s, alias %q) is not hearth's bridge: %w", a.Name, link.Type(), a.Alias, ErrNotOwned)
	}
	return link, nil
}

// ownsBridge reports whether link is hearth's bridge: a bridge with hearth's
// alias, or with no alias but hearth's derived MAC (the kernel ignores an
// alias given at creation, so it is set just after; a crash in between
// leaves that state).
func (h *Host) ownsBridge(link netlink.Link) bool {
	if link.Type() != "bridge" {
		return false
	}
	a := link.Attrs()
	return a.Alias == bridgeAlias || a.Alias == "" && a.HardwareAddr.String() == bridgeMAC(h.cfg.Bridge).String()
}

// ensureBridge creates the bridge if needed, sets its address and brings it up.
func (h *Host) ensureBridge() error {
	br, err := h.bridge()
	if err != nil {
		return err
	}
	if br == nil {
		if br, err = h.createBridge(); err != nil {
			return err
		}
	}
	if br.Attrs().Alias != bridgeAlias {
		if err := h.nl.LinkSetAlias(br, bridgeAlias); err != nil {
			return fmt.Errorf("set alias of bridge %s: %w", h.cfg.Bridge, err)
		}
	}
	if err := h.ensureBridgeAddr(br); err != nil {
		return err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.nl.LinkSetUp(br); err != nil {
			return fmt.Errorf("set bridge %s up: %w", h.cfg.Bridge, err)
		}
	}
	return nil
}

// createBridge creates the bridge with a fixed MAC, which also marks it as
// hearth's until ensureBridge sets the alias.
func (h *Host) createBridge() (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = h.cfg.Bridge
	attrs.HardwareAddr = bridgeMAC(h.cfg.Bridge)
	if err := h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create bridge %s: %w", h.cfg.Bridge, err)
	}
	br, err := h.bridge()
	if err == nil && br == nil {
		err = fmt.Errorf("bridge %s vanished after creation", h.cfg.Bridge)
	}
	return br, err
}

// gatewayNet is the bridge's address with the subnet's mask.
func (h *Host) gatewayNet() *net.IPNet {
	gw := h.cfg.Gateway().As4()
	return &net.IPNet{IP: net.IP(gw[:]), Mask: net.CIDRMask(h.cfg.Subnet.Bits(), 32)}
}

// ensureBridgeAddr gives the bridge exactly one IPv4 address, the gateway's.
func (h *Host) ensureBridgeAddr(br netlink.Link) error {
	want := h.gatewayNet()
	addrs, err := h.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", h.cfg.Bridge, err)
	}
	have := false
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			have = true
			continue
		}
		// The bridge is hearth's: an old address is from an earlier subnet.
		if err := h.nl.AddrDel(br, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, h.cfg.Bridge, err)
		}
	}
	if have {
		return nil
	}
	if err := h.nl.AddrAdd(br, &netlink.Addr{IPNet: want}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", want, h.cfg.Bridge, err)
	}
	return nil
}

// deleteBridge removes hearth's bridge. A missing bridge, or a link of that
// name that is not hearth's, leaves nothing to do.
func (h *Host) deleteBridge() error {
	br, err := h.bridge()
	if errors.Is(err, ErrNotOwned) || err == nil && br == nil {
		return nil
	}
	if err != nil {
		return err
	}
	if err := h.nl.LinkDel(br); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", h.cfg.Bridge, err)
	}
	return nil
}

// checkBridge reports a missing, foreign, unaddressed or down bridge.
func (h *Host) checkBridge() []Problem {
	name, gw := h.cfg.Bridge, h.gatewayNet()
	br, err := h.bridge()
	switch {
	case err != nil && errors.Is(err, ErrNotOwned):
		return []Problem{{Check: "bridge", Message: err.Error(),
			Fix: fmt.Sprintf("delete link %s (ip link del %s) or set network.bridge to another name", name, name)}}
	case err != nil:
		return []Problem{{Check: "bridge", Message: err.Error(), Fix: "run hearth doctor as root"}}
	case br == nil:
		return []Problem{{Check: "bridge", Message: fmt.Sprintf("bridge %s does not exist", name),
			Fix: "start hearth serve, which creates it"}}
	}
	var ps []Problem
	addrs, err := h.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		ps = append(ps, Problem{Check: "bridge", Message: fmt.Sprintf("list addresses of %s: %v", name, err), Fix: "run hearth doctor as root"})
	} else if !hasAddr(addrs, gw) {
		ps = append(ps, Problem{Check: "bridge", Message: fmt.Sprintf("bridge %s lacks address %s (has %s)", name, gw, addrList(addrs)),
			Fix: fmt.Sprintf("restart hearth serve, or: ip addr add %s dev %s", gw, name)})
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		ps = append(ps, Problem{Check: "bridge", Message: fmt.Sprintf("bridge %s is down", name),
			Fix: fmt.Sprintf("restart hearth serve, or: ip link set %s up", name)})
	}
	return ps
}

func hasAddr(addrs []netlink.Addr, want *net.IPNet) bool {
	for _, a := range addrs {
		if a.IPNet.String() == want.String() {
			return true
		}
	}
	return false
}

func addrList(addrs []netlink.Addr) string {
	if len(addrs) == 0 {
		return "none"
	}
	var s []string
	for _, a := range addrs {
		s = append(s, a.IPNet.String())
	}
	return strings.Join(s, ", ")
}

// checkForwarding reports IPv4 forwarding being off.
func (h *Host) checkForwarding() []Problem {
	v, err := readSysctl(h.ns, ipForwardPath)
	switch {
	case err != nil:
		return []Problem{{Check: "ip_forward", Message: err.Error(), Fix: "run hearth doctor as root"}}
	case v != "1":
		return []Problem{{Check: "ip_forward", Message: "IPv4 forwarding is off (net.ipv4.ip_forward=" + v + "), so VMs cannot reach anything outside",
			Fix: "restart hearth serve, or: sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)"}}
	}
	return nil
}

// checkTables reports hearth's nftables tables, chains or maps being
// missing.
func (h *Host) checkTables() []Problem {
	missing, err := h.missingObjects()
	if err != nil {
		return []Problem{{Check: "nftables", Message: err.Error(), Fix: "run hearth doctor as root"}}
	}
	if len(missing) == 0 {
		return nil
	}
	return []Problem{{Check: "nftables", Message: fmt.Sprintf("hearth's firewall is incomplete: missing %v", missing),
		Fix: "restart hearth serve, which recreates its tables and rules"}}
}

// isNotFound reports whether a netlink lookup failed because the link is gone.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}
