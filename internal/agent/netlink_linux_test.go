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
	return h
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
