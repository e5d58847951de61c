package network

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The traffic test builds, all in namespaces it creates:
//
//	 A (vm-a, eth0 .2) ─┐
//	 B (vm-b, eth0 .3) ─┼─ veth "hth…" ── hearth0 172.30.0.1/24 ─┐  H (hearth's side, default route via O)
//	 C (vm-c, eth0 .4) ─┘   (on the bridge)                      └─ out0 192.0.2.1/24 ── O (eth0 192.0.2.2/24)
//
// O is the host's upstream router and, behind it, the internet: it also
// holds 198.51.100.2 and whatever other addresses a test gives it, which H
// reaches through its default route. 192.0.2.0/24 is the host's own
// network (a route through one of its interfaces), which VMs must not
// reach.
//
// The stand-in VMs are veth peers instead of TAPs (a TAP needs a process to
// carry its frames); the bridge-family rules match them by name the same way.

const (
	okTimeout      = 3 * time.Second
	blockedTimeout = 400 * time.Millisecond
	outsideIP      = "198.51.100.2" // on the internet, behind O
	routerIP       = "192.0.2.2"    // O on the host's network
	hostOutsideIP  = "192.0.2.1"    // H on the host's network: the address VMs are masqueraded to
	metadataIP     = "169.254.169.254"
)

// vm is a stand-in VM: a namespace whose eth0 is on hearth's bridge.
type vm struct {
	id   string
	ns   netns.NsHandle
	nl   *netlink.Handle
	ip   netip.Addr
	slot Slot
}

// attachVM creates a namespace for vmID and connects it to h's bridge
// through a veth pair named like its TAP, with the slot's MAC and IP and a
// default route via the gateway. It does not sync rules.
func attachVM(t *testing.T, h *Host, hostNL *netlink.Handle, vmID, ip string) *vm {
	t.Helper()
	ns := newNetNS(t)
	v := &vm{id: vmID, ns: ns, nl: nlHandle(t, ns), ip: netip.MustParseAddr(ip)}
	tap := TAPName(h.Config().TAPPrefix, vmID, 0)
	v.slot = Slot{VMID: vmID, TAP: tap, MAC: MACFor(vmID), IP: v.ip, Egress: EgressPolicy{Mode: EgressOpen}}

	br := must(hostNL.LinkByName(h.Config().Bridge))(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MasterIndex = tap, br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerHardwareAddr: v.slot.MAC, PeerNamespace: netlink.NsFd(int(ns))}
	if err := hostNL.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", tap, err)
	}
	if err := hostNL.LinkSetAlias(veth, tapAlias(vmID)); err != nil {
		t.Fatal(err)
	}
	if err := hostNL.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	configureEth0(t, v.nl, netip.PrefixFrom(v.ip, h.Config().Subnet.Bits()), h.Config().Gateway())
	return v
}

// configureEth0 addresses eth0 in a namespace, brings it up and, if gw is
// valid, adds a default route through it.
func configureEth0(t *testing.T, nl *netlink.Handle, addr netip.Prefix, gw netip.Addr) {
	t.Helper()
	eth0 := must(nl.LinkByName("eth0"))(t)
	if err := nl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	if gw.IsValid() {
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("add default route: %v", err)
		}
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addOutside creates namespace O linked to H by a veth (out0 in H, eth0
// in O) on the host's network 192.0.2.0/24, makes O H's default route,
// and gives O outsideIP and the extra addresses.
func addOutside(t *testing.T, hostNL *netlink.Handle, extra ...string) netns.NsHandle {
	t.Helper()
	o := newNetNS(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "out0"
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(o))}
	if err := hostNL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := hostNL.AddrAdd(veth, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(hostOutsideIP + "/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := hostNL.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	if err := hostNL.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index, Gw: net.ParseIP(routerIP)}); err != nil {
		t.Fatalf("add default route: %v", err)
	}
	onl := nlHandle(t, o)
	configureEth0(t, onl, netip.MustParsePrefix(routerIP+"/24"), netip.Addr{})
	eth0 := must(onl.LinkByName("eth0"))(t)
	for _, a := range append([]string{outsideIP}, extra...) {
		if err := onl.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(netip.MustParseAddr(a), 32))}); err != nil {
			t.Fatalf("add %s to O: %v", a, err)
		}
	}
	return o
}

// serveTCP listens on addr in ns and answers every connection with the
// peer address it sees, then closes it.
func serveTCP(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var ln net.Listener
	err := inNetNS(ns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // closing ends the accept loop
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().String()) // a failed write shows up as a client error
			_ = c.Close()
		}
	}()
}

// dialTCP connects from ns to addr and returns the peer address the server
// saw.
func dialTCP(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var seen string
	err := inNetNS(ns, func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		seen = string(b)
		return err
	})
	return seen, err
}

// listenUDP opens a UDP socket on addr in ns and returns a function that
// reports whether a datagram arrived within timeout.
func listenUDP(t *testing.T, ns netns.NsHandle, addr string) func(timeout time.Duration) (string, bool) {
	t.Helper()
	var pc net.PacketConn
	err := inNetNS(ns, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return func(timeout time.Duration) (string, bool) {
		if err := pc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return "", false
		}
		return fmt.Sprintf("%s from %s", buf[:n], from), true
	}
}

// sendUDP sends one datagram from ns, from local address src (may be "").
func sendUDP(ns netns.NsHandle, src, dst, msg string) error {
	return inNetNS(ns, func() error {
		var laddr *net.UDPAddr
		if src != "" {
			laddr = &net.UDPAddr{IP: net.ParseIP(src)}
		}
		c, err := net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
		if err != nil {
			return err
		}
		_, werr := c.Write([]byte(msg))
		return errors.Join(werr, c.Close())
	})
}

// ping sends ICMP echo requests from ns to dst over a raw socket, one every
// 250ms (like ping(8), so a request lost to neighbour resolution is
// retried), until a reply arrives or timeout passes.
func ping(ns netns.NsHandle, dst string, timeout time.Duration) error {
	return inNetNS(ns, func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		id := uint16(os.Getpid())
		deadline := time.Now().Add(timeout)
		buf := make([]byte, 1500)
		for seq := uint16(1); time.Now().Before(deadline); seq++ {
			req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'h', 't', 'h'}
			binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))
			if _, err := c.WriteTo(req, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
				return err
			}
			next := time.Now().Add(250 * time.Millisecond)
			if next.After(deadline) {
				next = deadline
			}
			if err := c.SetReadDeadline(next); err != nil {
				return err
			}
			for {
				n, from, err := c.ReadFrom(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					return err
				}
				if from.String() == dst && n >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == id {
					return nil
				}
			}
		}
		return fmt.Errorf("ping %s: no reply within %v", dst, timeout)
	})
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestTraffic(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	hns := newNetNS(t)
	hostNL := nlHandle(t, hns)
	h := setupHost(t, hns, Config{HostPorts: []PortRule{{"tcp", 7001}}})
	gw := h.Config().Gateway().String()
	a := attachVM(t, h, hostNL, "vm-a", "172.30.0.2")
	b := attachVM(t, h, hostNL, "vm-b", "172.30.0.3")
	c := attachVM(t, h, hostNL, "vm-c", "172.30.0.4") // never gets a slot
	// A metadata service at the link-local 169.254.169.254, behind the
	// outside link, as a cloud host has one: the host reaches it, VMs
	// must not, whatever their policy.
	o := addOutside(t, hostNL, metadataIP)

	sync := func(slots ...Slot) {
		t.Helper()
		if err := h.SyncRules(ctx, slots); err != nil {
			t.Fatal(err)
		}
	}
	sync(a.slot, b.slot)

	for _, v := range []*vm{a, b} {
		serveTCP(t, v.ns, v.ip.String()+":9000")
	}
	serveTCP(t, hns, "0.0.0.0:7001") // a host port VMs may use
	serveTCP(t, hns, "0.0.0.0:7002") // a host port they may not
	for _, port := range []string{"9000", "9001"} {
		serveTCP(t, o, outsideIP+":"+port)
	}
	udpOut := listenUDP(t, o, outsideIP+":9002")
	serveTCP(t, o, metadataIP+":80")

	// works and blocked check one connection or ping.
	works := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: want it to work, got %v", what, err)
		}
	}
	blocked := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: want it blocked, but it worked", what)
		}
	}
	tcp := func(from netns.NsHandle, addr string, timeout time.Duration) error {
		_, err := dialTCP(from, addr, timeout)
		return err
	}

	t.Run("host to vm", func(t *testing.T) {
		works("H→A tcp", tcp(hns, "172.30.0.2:9000", okTimeout))
		works("H→B ping", ping(hns, "172.30.0.3", okTimeout))
	})
	t.Run("vm to vm", func(t *testing.T) {
		blocked("A→B tcp", tcp(a.ns, "172.30.0.3:9000", blockedTimeout))
		blocked("B→A tcp", tcp(b.ns, "172.30.0.2:9000", blockedTimeout))
		blocked("A→B ping", ping(a.ns, "172.30.0.3", blockedTimeout))
		// Routed through the gateway instead of bridged.
		eth0 := must(a.nl.LinkByName("eth0"))(t)
		route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("172.30.0.3/32")), Gw: net.ParseIP(gw)}
		if err := a.nl.RouteAdd(route); err != nil {
			t.Fatal(err)
		}
		blocked("A→B tcp via the gateway", tcp(a.ns, "172.30.0.3:9000", blockedTimeout))
		if err := a.nl.RouteDel(route); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("vm to host", func(t *testing.T) {
		works("A→gateway tcp 7001 (a host port)", tcp(a.ns, gw+":7001", okTimeout))
		blocked("A→gateway tcp 7002", tcp(a.ns, gw+":7002", blockedTimeout))
		blocked("A→host's other address tcp 7002", tcp(a.ns, hostOutsideIP+":7002", blockedTimeout))
		blocked("A→gateway ping", ping(a.ns, gw, blockedTimeout))
	})
	t.Run("egress open", func(t *testing.T) {
		seen, err := dialTCP(a.ns, outsideIP+":9000", okTimeout)
		works("A→O tcp", err)
		if !strings.HasPrefix(seen, hostOutsideIP+":") {
			t.Errorf("O saw the connection from %q, want %s (masqueraded)", seen, hostOutsideIP)
		}
		works("A→O ping", ping(a.ns, outsideIP, okTimeout))
		works("H→metadata tcp (the host's)", tcp(hns, metadataIP+":80", okTimeout))
		blocked("A→metadata tcp (link-local)", tcp(a.ns, metadataIP+":80", blockedTimeout))
		blocked("A→metadata ping", ping(a.ns, metadataIP, blockedTimeout))
	})
	t.Run("unknown vm", func(t *testing.T) {
		blocked("C→O tcp", tcp(c.ns, outsideIP+":9000", blockedTimeout))
		blocked("C→gateway tcp 7001", tcp(c.ns, gw+":7001", blockedTimeout))
		blocked("H→C ping", ping(hns, "172.30.0.4", blockedTimeout))
	})
	t.Run("egress none", func(t *testing.T) {
		a.slot.Egress = EgressPolicy{Mode: EgressNone}
		sync(a.slot, b.slot)
		blocked("A→O tcp", tcp(a.ns, outsideIP+":9000", blockedTimeout))
		blocked("A→O ping", ping(a.ns, outsideIP, blockedTimeout))
		works("B→O tcp", tcp(b.ns, outsideIP+":9000", okTimeout))
		works("H→A tcp", tcp(hns, "172.30.0.2:9000", okTimeout))
	})
	t.Run("egress allowlist", func(t *testing.T) {
		a.slot.Egress = EgressPolicy{Mode: EgressAllowlist, Allow: []AllowRule{
			{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Protocol: "tcp", Port: 9000},
		}}
		sync(a.slot, b.slot)
		works("A→O tcp 9000", tcp(a.ns, outsideIP+":9000", okTimeout))
		blocked("A→O tcp 9001", tcp(a.ns, outsideIP+":9001", blockedTimeout))
		blocked("A→O ping", ping(a.ns, outsideIP, blockedTimeout))
		if err := sendUDP(a.ns, "", outsideIP+":9002", "allowlisted-a"); err != nil {
			t.Fatal(err)
		}
		if got, ok := udpOut(blockedTimeout); ok {
			t.Errorf("A→O udp 9002 arrived (%s), want it blocked", got)
		}
	})
	// One VM at a time: AddSlot and RemoveSlot give the same traffic as
	// SyncRules does, without touching the other VMs.
	t.Run("add and remove one vm", func(t *testing.T) {
		a.slot.Egress = EgressPolicy{Mode: EgressOpen}
		if err := h.AddSlot(ctx, a.slot); err != nil { // replaces A's allowlist
			t.Fatal(err)
		}
		works("A→O tcp 9001 (open now)", tcp(a.ns, outsideIP+":9001", okTimeout))
		if err := h.RemoveSlot(ctx, a.id); err != nil {
			t.Fatal(err)
		}
		blocked("A→O tcp after RemoveSlot", tcp(a.ns, outsideIP+":9000", blockedTimeout))
		blocked("A→gateway tcp 7001 after RemoveSlot", tcp(a.ns, gw+":7001", blockedTimeout))
		blocked("H→A ping after RemoveSlot", ping(hns, "172.30.0.2", blockedTimeout))
		works("B→O tcp while A is removed", tcp(b.ns, outsideIP+":9000", okTimeout))
		works("H→B tcp while A is removed", tcp(hns, "172.30.0.3:9000", okTimeout))

		if err := h.AddSlot(ctx, c.slot); err != nil { // C never had rules
			t.Fatal(err)
		}
		works("C→O tcp after AddSlot", tcp(c.ns, outsideIP+":9000", okTimeout))
		works("H→C ping after AddSlot", ping(hns, "172.30.0.4", okTimeout))
		blocked("C→B tcp after AddSlot", tcp(c.ns, "172.30.0.3:9000", blockedTimeout))
		if err := h.RemoveSlot(ctx, c.id); err != nil {
			t.Fatal(err)
		}
		blocked("C→O tcp after RemoveSlot", tcp(c.ns, outsideIP+":9000", blockedTimeout))

		if err := h.AddSlot(ctx, a.slot); err != nil {
			t.Fatal(err)
		}
		works("A→O tcp after AddSlot again", tcp(a.ns, outsideIP+":9000", okTimeout))
		works("H→A tcp after AddSlot again", tcp(hns, "172.30.0.2:9000", okTimeout))
	})
	t.Run("anti-spoofing", func(t *testing.T) {
		// A (egress none) claims B's address (egress open) to get out.
		a.slot.Egress = EgressPolicy{Mode: EgressNone}
		sync(a.slot, b.slot)
		eth0 := must(a.nl.LinkByName("eth0"))(t)
		spoofed := &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("172.30.0.3/32"))}
		if err := a.nl.AddrAdd(eth0, spoofed); err != nil {
			t.Fatal(err)
		}
		if err := sendUDP(a.ns, "172.30.0.3", outsideIP+":9002", "spoofed"); err != nil {
			t.Fatal(err)
		}
		if got, ok := udpOut(blockedTimeout); ok {
			t.Errorf("A's datagram with B's address arrived (%s), want it dropped", got)
		}
		if err := a.nl.AddrDel(eth0, spoofed); err != nil {
			t.Fatal(err)
		}
		if err := sendUDP(b.ns, "", outsideIP+":9002", "genuine"); err != nil {
			t.Fatal(err)
		}
		if got, ok := udpOut(okTimeout); !ok || !strings.HasPrefix(got, "genuine from "+hostOutsideIP+":") {
			t.Errorf("B's own datagram: got %q, %v; want it from %s", got, ok, hostOutsideIP)
		}
	})
	// Control: without hearth's tables the same probes get through, so the
	// "blocked" results above come from the rules, not from the test setup.
	t.Run("control without rules", func(t *testing.T) {
		if err := h.deleteTables(); err != nil {
			t.Fatal(err)
		}
		works("A→B tcp", tcp(a.ns, "172.30.0.3:9000", okTimeout))
		works("A→B ping", ping(a.ns, "172.30.0.3", okTimeout))
		works("A→gateway tcp 7002", tcp(a.ns, gw+":7002", okTimeout))
		works("A→gateway ping", ping(a.ns, gw, okTimeout))
		works("H→C ping", ping(hns, "172.30.0.4", okTimeout))
		eth0 := must(a.nl.LinkByName("eth0"))(t)
		spoofed := &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("172.30.0.3/32"))}
		if err := a.nl.AddrAdd(eth0, spoofed); err != nil {
			t.Fatal(err)
		}
		if err := sendUDP(a.ns, "172.30.0.3", outsideIP+":9002", "spoofed"); err != nil {
			t.Fatal(err)
		}
		if got, ok := udpOut(okTimeout); !ok || !strings.HasPrefix(got, "spoofed from 172.30.0.3:") {
			t.Errorf("spoofed datagram without rules: got %q, %v; want it to arrive unmasqueraded", got, ok)
		}
	})
}
