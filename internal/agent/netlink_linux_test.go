package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/test/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newTestNetns creates a network namespace of the test's own and returns
// a netlink handle working in it. Nothing runs in the namespace: the
// calling thread enters it only to create it and leaves at once, so no
// operation can reach the host's interfaces. The namespace, and every link
// in it, goes away at cleanup.
func newTestNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	_, h := newTestNetnsAt(t)
	return h
}

// newTestNetnsAt is newTestNetns, also returning the namespace (valid
// until the test ends).
func newTestNetnsAt(t *testing.T) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	ns := func() netns.NsHandle {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("current netns: %v", err)
		}
		defer orig.Close()
		ns, err := netns.New() // unshare: this thread is now in ns
		if err != nil {
			runtime.UnlockOSThread() // still in orig
			t.Skipf("cannot create a network namespace: %v", err)
		}
		if err := netns.Set(orig); err != nil {
			// The thread stays locked, so the runtime discards it with
			// this goroutine rather than reusing it.
			t.Fatalf("leave test netns: %v", err)
		}
		runtime.UnlockOSThread()
		return ns
	}()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
	})
	return ns, h
}

// TestNetlinkOpsInNetns applies networks for real, through netlink, to a
// veth link in a namespace the test creates.
func TestNetlinkOpsInNetns(t *testing.T) {
	h := newTestNetns(t)
	mac := mustMAC("02:68:65:61:72:01")
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hv0", HardwareAddr: mac}, PeerName: "hv1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("create veth: %v", err)
	}
	peer, err := h.LinkByName("hv1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil { // so that hv0 has a carrier
		t.Fatal(err)
	}
	link, err := h.LinkByName("hv0")
	if err != nil {
		t.Fatal(err)
	}
	old := &netlink.Addr{IPNet: mustIPNet(t, "198.51.100.9/24")}
	if err := h.AddrAdd(link, old); err != nil { // to be replaced
		t.Fatal(err)
	}

	ops := netlinkOps{h: h}
	if _, err := ops.LinkByMAC(mustMAC("02:68:65:61:72:99")); !errors.Is(err, errNoLink) {
		t.Fatalf("LinkByMAC(unknown) = %v, want errNoLink", err)
	}
	w := networker{ops: ops, linkTimeout: 2 * time.Second, resolvConf: filepath.Join(t.TempDir(), "resolv.conf")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	v4 := agentapi.NetworkConfig{
		MAC: mac.String(), Address: "192.0.2.5/24", Gateway: "192.0.2.1", DNS: []string{"192.0.2.53"}, MTU: 1380,
	}
	for range 2 { // the second time is a no-op
		ready, err := w.apply(ctx, v4)
		if err != nil {
			t.Fatal(err)
		}
		if ready != (agentapi.NetworkReady{Interface: "hv0", Address: "192.0.2.5/24", Gateway: "192.0.2.1"}) {
			t.Fatalf("apply = %+v", ready)
		}
		checkLink(t, h, "hv0", 1380, unix.AF_INET, []string{"192.0.2.5/24"})
		checkDefaultRoute(t, h, unix.AF_INET, "hv0", "192.0.2.1")
	}
	if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("lo is not up: %v", err)
	}

	// IPv6 on the same link, with a link-local gateway: the IPv4 address
	// and route stay, and so does the kernel's link-local address.
	v6 := agentapi.NetworkConfig{MAC: mac.String(), Address: "2001:db8::5/64", Gateway: "fe80::1", MTU: 1380}
	if _, err := w.apply(ctx, v6); err != nil {
		t.Fatal(err)
	}
	checkLink(t, h, "hv0", 1380, unix.AF_INET, []string{"192.0.2.5/24"})
	checkDefaultRoute(t, h, unix.AF_INET, "hv0", "192.0.2.1")
	checkDefaultRoute(t, h, unix.AF_INET6, "hv0", "fe80::1")
	addrs := addrStrings(t, h, "hv0", unix.AF_INET6)
	if !slices.Contains(addrs, "2001:db8::5/64") {
		t.Fatalf("IPv6 addresses %v", addrs)
	}
}

func mustIPNet(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

// checkLink checks that name is up with the given MTU and exactly the given
// global addresses of family.
func checkLink(t *testing.T, h *netlink.Handle, name string, mtu, family int, want []string) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MTU != mtu {
		t.Fatalf("%s: flags %v, mtu %d; want up, mtu %d", name, l.Attrs().Flags, l.Attrs().MTU, mtu)
	}
	if got := addrStrings(t, h, name, family); !slices.Equal(got, want) {
		t.Fatalf("%s addresses %v, want %v", name, got, want)
	}
}

// addrStrings lists the non-link-local addresses of family on name.
func addrStrings(t *testing.T, h *netlink.Handle, name string, family int) []string {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(l, family)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a.IPNet.String())
		}
	}
	return out
}

func checkDefaultRoute(t *testing.T, h *netlink.Handle, family int, dev, gw string) {
	t.Helper()
	routes, err := h.RouteList(nil, family)
	if err != nil {
		t.Fatal(err)
	}
	var defaults []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			l, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				t.Fatal(err)
			}
			defaults = append(defaults, l.Attrs().Name+" via "+r.Gw.String())
		}
	}
	if want := []string{dev + " via " + gw}; !slices.Equal(defaults, want) {
		t.Fatalf("default routes %v, want %v", defaults, want)
	}
}

func TestFirstNIC(t *testing.T) {
	attrs := func(index int, name, encap string, mac net.HardwareAddr) netlink.LinkAttrs {
		return netlink.LinkAttrs{Index: index, Name: name, EncapType: encap, HardwareAddr: mac}
	}
	lo := attrs(1, "lo", "loopback", make(net.HardwareAddr, 6))
	lo.Flags = net.FlagLoopback | net.FlagUp
	links := []netlink.Link{
		&netlink.Device{LinkAttrs: lo},
		&netlink.Ifb{LinkAttrs: attrs(2, "ifb0", "ether", mustMAC("62:3e:06:32:52:c0"))},
		&netlink.Device{LinkAttrs: attrs(3, "sit0", "sit", net.HardwareAddr{0, 0, 0, 0})},
		&netlink.Device{LinkAttrs: attrs(6, "eth1", "ether", mustMAC("02:fc:00:00:00:02"))},
		&netlink.Device{LinkAttrs: attrs(5, "eth0", "ether", mustMAC("02:fc:00:00:00:01"))},
		&netlink.Veth{LinkAttrs: attrs(4, "veth0", "ether", mustMAC("02:fc:00:00:00:03"))},
		&netlink.Device{LinkAttrs: attrs(7, "eth2", "ether", make(net.HardwareAddr, 6))},
	}
	if got, err := firstNIC(links); err != nil || got != "eth0" {
		t.Fatalf("firstNIC = %q, %v; want eth0", got, err)
	}
	if _, err := firstNIC(links[:3]); !errors.Is(err, errNoLink) { // lo, ifb0, sit0
		t.Fatalf("firstNIC without a NIC = %v, want errNoLink", err)
	}
}

// nicOps is netlinkOps with a given NIC: a test namespace has no hardware
// device, only the veth link standing in for one.
type nicOps struct {
	netlinkOps
	nic string
}

func (o nicOps) FirstNIC() (string, error) { return o.nic, nil }

// TestMMDSInNetns reads the token from an MMDS at 169.254.169.254 in a
// namespace of its own, reached over a veth link from the guest's
// namespace, through real netlink: the temporary address and route make it
// reachable, and are gone after; then again once the host has configured
// the NIC, and a leftover address does not survive that configuration.
func TestMMDSInNetns(t *testing.T) {
	guestNS, gh := newTestNetnsAt(t)
	mmdsNS, mh := newTestNetnsAt(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hv0", HardwareAddr: mustMAC("02:68:65:61:72:02")}, PeerName: "hv1"}
	if err := gh.LinkAdd(veth); err != nil {
		t.Fatalf("create veth: %v", err)
	}
	peer, err := gh.LinkByName("hv1")
	if err != nil {
		t.Fatal(err)
	}
	if err := gh.LinkSetNsFd(peer, int(mmdsNS)); err != nil {
		t.Fatal(err)
	}
	// The MMDS side: 169.254.169.254, answering whatever address asks.
	if peer, err = mh.LinkByName("hv1"); err != nil {
		t.Fatal(err)
	}
	if err := mh.AddrAdd(peer, &netlink.Addr{IPNet: mustIPNet(t, "169.254.169.254/16")}); err != nil {
		t.Fatal(err)
	}
	if err := mh.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	if err := mh.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: mustIPNet(t, "192.0.2.0/24"), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := netnstest.RunIn(mmdsNS, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(agentapi.MMDSAddress, "80"))
		return err
	}); err != nil {
		t.Fatalf("listen in the MMDS namespace: %v", err)
	}
	m := newFakeMMDSOn(t, l)

	// The guest side: dials from its namespace.
	d := &net.Dialer{Timeout: 5 * time.Second}
	dial := dialFunc(func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = netnstest.RunIn(guestNS, func() error {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	})
	token := newToken(t)
	opts, _ := testOptions(t, token)
	opts = opts.withDefaults()
	opts.netOps = nicOps{netlinkOps{h: gh}, "hv0"}
	opts.mmdsDial = dial
	opts.inGuest = true
	opts.TokenSources = []string{"mmds"}

	var during []string
	m.onGet = func() { during = append(addrStringsAll(t, gh, "hv0"), routesTo(t, gh, agentapi.MMDSAddress)...) }
	read := func(want []byte) {
		t.Helper()
		m.putToken(t, want)
		got, _, err := readToken(context.Background(), opts)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("readToken = %x, %v", got, err)
		}
	}

	// Before the host's configuration: no address on the NIC.
	read(token)
	if want := []string{"169.254.169.1/32", "hv0 169.254.169.254/32"}; !slices.Equal(during, want) {
		t.Fatalf("while reading: %v, want %v", during, want)
	}
	if got := append(addrStringsAll(t, gh, "hv0"), routesTo(t, gh, agentapi.MMDSAddress)...); len(got) != 0 {
		t.Fatalf("left behind: %v", got)
	}

	// The host configures the NIC; later (a snapshot restore) the token is
	// read again: through the host's address, with only the route added.
	w := networker{ops: opts.netOps, linkTimeout: 2 * time.Second, resolvConf: filepath.Join(t.TempDir(), "resolv.conf")}
	cfg := agentapi.NetworkConfig{MAC: "02:68:65:61:72:02", Address: "192.0.2.5/24"}
	if _, err := w.apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	token2 := newToken(t)
	read(token2)
	if want := []string{"192.0.2.5/24", "hv0 169.254.169.254/32"}; !slices.Equal(during, want) {
		t.Fatalf("while reading again: %v, want %v", during, want)
	}
	if got := append(addrStringsAll(t, gh, "hv0"), routesTo(t, gh, agentapi.MMDSAddress)...); !slices.Equal(got, []string{"192.0.2.5/24"}) {
		t.Fatalf("after reading again: %v", got)
	}

	// An address left by an agent that died while reading does not survive
	// the host's configuration, though other link-local ones do.
	link, err := gh.LinkByName("hv0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"169.254.169.1/32", "169.254.7.7/16"} {
		if err := gh.AddrAdd(link, &netlink.Addr{IPNet: mustIPNet(t, a), Scope: int(netlink.SCOPE_LINK)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got := addrStringsAll(t, gh, "hv0"); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"169.254.7.7/16", "192.0.2.5/24"}) {
		t.Fatalf("after the host's configuration: %v", got)
	}
}

// addrStringsAll lists the IPv4 addresses on name, link-local included.
func addrStringsAll(t *testing.T, h *netlink.Handle, name string) []string {
	t.Helper()
	ps, err := netlinkOps{h: h}.IPv4Addrs(name)
	if err != nil {
		t.Error(err)
		return nil
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// routesTo lists the main table's routes to ip/32, as "DEV DST".
func routesTo(t *testing.T, h *netlink.Handle, ip string) []string {
	t.Helper()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: mustIPNet(t, ip+"/32"), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Error(err)
		return nil
	}
	var out []string
	for _, r := range routes {
		l, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			t.Error(err)
			return nil
		}
		out = append(out, l.Attrs().Name+" "+r.Dst.String())
	}
	return out
}
