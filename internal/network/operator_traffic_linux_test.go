package network

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses on O (the internet behind the host's router) for the tests of
// what the host denies every VM.
const (
	publicIP     = "198.51.100.7"    // the internet: reachable, so the test sees success
	deniedIP     = "198.51.100.9"    // the internet, in the operator's network.deny
	private10    = "10.0.0.5"        // RFC 1918, lifted by the operator's allow_private
	private10Too = "10.0.0.6"        // RFC 1918, lifted and denied again by network.deny
	private192   = "192.168.1.10"    // RFC 1918, never lifted
	private172   = "172.16.5.5"      // RFC 1918, never lifted
	cgnatIP      = "100.64.1.1"      // CGNAT, lifted
	alibabaIP    = "100.100.100.200" // Alibaba Cloud's metadata service, inside CGNAT
	azureIP      = "168.63.129.16"   // Azure's wireserver
	routedIP     = "203.0.113.9"     // the internet until the host routes 203.0.113.0/24 itself
)

// probe is one TCP connection attempt from a namespace.
type probe struct {
	what string
	from netns.NsHandle
	addr string
}

// expect runs the probes at once (so blocked ones cost one timeout, not
// one each) and fails the test for each that does not go as wanted.
func expect(t *testing.T, wantOK bool, probes ...probe) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := blockedTimeout
			if wantOK {
				timeout = okTimeout
			}
			_, err := dialTCP(p.from, p.addr, timeout)
			switch {
			case wantOK && err != nil:
				t.Errorf("%s (%s): want it to work, got %v", p.what, p.addr, err)
			case !wantOK && err == nil:
				t.Errorf("%s (%s): want it blocked, but it worked", p.what, p.addr)
			}
		}()
	}
	wg.Wait()
}

// TestTrafficOperatorNetwork: whatever their policy, VMs reach neither
// the operator's networks (private ranges, the host's own subnets and
// addresses) nor cloud metadata services, while the internet stays
// reachable; network.allow_private opens private destinations, but never
// a metadata service, and network.deny closes anything; a route the host
// gains while running closes its subnet without a restart.
func TestTrafficOperatorNetwork(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	hns := newNetNS(t)
	hostNL := nlHandle(t, hns)
	h := setupHost(t, hns, Config{HostPorts: []PortRule{{"tcp", 7001}}})
	a := attachVM(t, h, hostNL, "vm-a", "172.30.0.2") // open
	b := attachVM(t, h, hostNL, "vm-b", "172.30.0.3") // allow-list: any address, tcp 9000
	b.slot.Egress = EgressPolicy{Mode: EgressAllowlist, Allow: []AllowRule{{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "tcp", Port: 9000}}}
	outside := []string{publicIP, deniedIP, private10, private10Too, private192, private172, cgnatIP, alibabaIP, azureIP, routedIP}
	o := addOutside(t, hostNL, outside...)
	serveTCP(t, o, "0.0.0.0:9000")
	serveTCP(t, hns, "0.0.0.0:7001") // a host port
	if err := h.SyncRules(ctx, []Slot{a.slot, b.slot}); err != nil {
		t.Fatal(err)
	}
	at := func(ip string) string { return ip + ":9000" }
	gw := h.Config().Gateway().String()

	// Everything on O answers the host: what VMs cannot reach below is
	// the rules' doing, not the routing's.
	var fromHost []probe
	for _, ip := range append(outside, routerIP) {
		fromHost = append(fromHost, probe{"H→" + ip, hns, at(ip)})
	}
	expect(t, true, fromHost...)

	t.Run("default", func(t *testing.T) {
		expect(t, true,
			probe{"open→internet", a.ns, at(publicIP)},
			probe{"allow-list→internet", b.ns, at(publicIP)},
			probe{"open→gateway host port", a.ns, gw + ":7001"},
		)
		var blocked []probe
		for _, v := range []*vm{a, b} {
			for _, ip := range []string{private10, private192, private172, cgnatIP, alibabaIP, azureIP} {
				blocked = append(blocked, probe{v.id + "→" + ip, v.ns, at(ip)})
			}
			blocked = append(blocked,
				probe{v.id + "→the host's router (its own network)", v.ns, at(routerIP)},
				probe{v.id + "→the host's uplink address, host port", v.ns, hostOutsideIP + ":7001"},
			)
		}
		expect(t, false, blocked...)
	})

	t.Run("operator allow and deny", func(t *testing.T) {
		// The operator's configuration changes; the daemon restarts
		// (the first Host's cleanup tears the namespace's network down).
		h2, err := NewHost(Config{
			HostPorts: []PortRule{{"tcp", 7001}},
			AllowPrivate: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("100.64.0.0/10"),
				netip.MustParsePrefix("192.0.2.0/24")},
			Deny: []netip.Prefix{netip.MustParsePrefix(private10Too + "/32"), netip.MustParsePrefix(deniedIP + "/32")},
		}, WithNetNS(hns))
		if err != nil {
			t.Fatal(err)
		}
		defer h2.Close()
		if err := h2.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		if err := h2.SyncRules(ctx, []Slot{a.slot, b.slot}); err != nil {
			t.Fatal(err)
		}
		expect(t, true,
			probe{"open→allowed 10/8", a.ns, at(private10)},
			probe{"allow-list→allowed 10/8", b.ns, at(private10)},
			probe{"open→allowed CGNAT", a.ns, at(cgnatIP)},
			probe{"open→allowed host network", a.ns, at(routerIP)},
			probe{"open→internet", a.ns, at(publicIP)},
		)
		expect(t, false,
			probe{"open→denied 10.0.0.6 (deny beats allow_private)", a.ns, at(private10Too)},
			probe{"open→denied internet address", a.ns, at(deniedIP)},
			probe{"open→Alibaba metadata (inside allowed CGNAT)", a.ns, at(alibabaIP)},
			probe{"open→Azure wireserver", a.ns, at(azureIP)},
			probe{"open→192.168/16 (not allowed)", a.ns, at(private192)},
			probe{"open→the host's uplink address (inside the allowed host network)", a.ns, hostOutsideIP + ":7001"},
		)
		if err := h2.SyncRules(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if err := h.SyncRules(ctx, []Slot{a.slot, b.slot}); err != nil { // back to the first configuration
			t.Fatal(err)
		}
	})

	t.Run("routes change at runtime", func(t *testing.T) {
		wctx, stop := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			// An hour between polls: only the kernel's notifications can
			// make the refresh happen within the test.
			h.WatchHostRoutes(wctx, time.Hour, func(err error) { t.Errorf("watch: %v", err) })
		}()
		defer func() { stop(); <-watched }()
		expect(t, true, probe{"open→203.0.113.9 (the internet)", a.ns, at(routedIP)})

		// The host gains a route to 203.0.113.0/24 (a VPN, a static
		// route, a new DHCP lease's network): it is the operator's now.
		out0 := must(hostNL.LinkByName("out0"))(t)
		route := &netlink.Route{LinkIndex: out0.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("203.0.113.0/24")), Gw: net.ParseIP(routerIP)}
		if err := hostNL.RouteAdd(route); err != nil {
			t.Fatal(err)
		}
		eventually(t, "203.0.113.0/24 in the host routes", func() bool { return hasRoute(h, "203.0.113.0/24") })
		expect(t, false, probe{"open→203.0.113.9 (routed by the host)", a.ns, at(routedIP)})
		expect(t, true, probe{"H→203.0.113.9", hns, at(routedIP)})

		if err := hostNL.RouteDel(route); err != nil {
			t.Fatal(err)
		}
		eventually(t, "203.0.113.0/24 gone from the host routes", func() bool { return !hasRoute(h, "203.0.113.0/24") })
		expect(t, true, probe{"open→203.0.113.9 (the internet again)", a.ns, at(routedIP)})
	})
}

// hasRoute reports whether the Host's installed rules deny cidr as the
// host's own network.
func hasRoute(h *Host, cidr string) bool {
	for _, p := range h.HostRoutes() {
		if p.String() == cidr {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds, failing the test after a generous
// deadline (the machine may be loaded).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
