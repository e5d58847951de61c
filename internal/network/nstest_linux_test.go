package network

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Helpers for tests that need root. Every one of them works inside network
// namespaces the test creates; nothing touches the machine's own namespace.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links and nftables rules inside them")
	}
}

// newNetNS creates a fresh network namespace with lo up; it goes away when
// the test ends (its handle is closed and nothing else holds it).
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// netns.New moves the calling thread into the new namespace; the
		// thread stays locked, so the runtime ends it when we return.
		runtime.LockOSThread()
		ns, err := netns.New()
		ch <- result{ns, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create network namespace: %v", r.err)
	}
	t.Cleanup(func() {
		if err := r.ns.Close(); err != nil {
			t.Errorf("close network namespace: %v", err)
		}
	})
	nl := nlHandle(t, r.ns)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("set lo up: %v", err)
	}
	return r.ns
}

// nlHandle is a netlink handle for ns, closed when the test ends.
func nlHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

// newTestHost returns a Host in ns; at the end of the test it is torn down
// (before the namespace goes) and closed.
func newTestHost(t *testing.T, ns netns.NsHandle, cfg Config) *Host {
	t.Helper()
	h, err := NewHost(cfg, WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if err := h.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return h
}

// setupHost is newTestHost followed by Setup.
func setupHost(t *testing.T, ns netns.NsHandle, cfg Config) *Host {
	t.Helper()
	h := newTestHost(t, ns, cfg)
	if err := h.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	return h
}

// mustList reads hearth's ruleset back from the kernel.
func mustList(t *testing.T, h *Host) string {
	t.Helper()
	s, err := listRuleset(h)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// slotFor is an open-egress slot for vmID on tap.
func slotFor(vmID, tap, ip string) Slot {
	return Slot{VMID: vmID, TAP: tap, MAC: MACFor(vmID), IP: netip.MustParseAddr(ip), Egress: EgressPolicy{Mode: EgressOpen}}
}

// addForeignLink creates a bridge in ns that is not hearth's: a stand-in
// for someone else's link (this kernel has no dummy links).
func addForeignLink(t *testing.T, nl *netlink.Handle, name, alias string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	link := &netlink.Bridge{LinkAttrs: attrs}
	if err := nl.LinkAdd(link); err != nil {
		t.Fatalf("add link %s: %v", name, err)
	}
	if alias == "" {
		return
	}
	if err := nl.LinkSetAlias(link, alias); err != nil {
		t.Fatalf("set alias of %s: %v", name, err)
	}
}

// rootIPForward reads the test process's own ip_forward, to prove that
// working in a namespace leaves it alone.
func rootIPForward(t *testing.T) string {
	t.Helper()
	v, err := readSysctl(netns.None(), ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// linkAddrs lists a link's IPv4 addresses as strings.
func linkAddrs(t *testing.T, nl *netlink.Handle, link netlink.Link) []string {
	t.Helper()
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	return out
}

func isUp(l netlink.Link) bool { return l.Attrs().Flags&net.FlagUp != 0 }
