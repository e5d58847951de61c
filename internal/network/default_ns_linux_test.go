package network

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestDefaultNamespace covers the production path, a Host without
// WithNetNS, which works on the calling thread's namespace. To keep the
// machine's own namespace out of it, the whole test runs on a thread moved
// into a fresh namespace (and never returned to the pool).
func TestDefaultNamespace(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	cfg := Config{Bridge: "dfltbr0", TAPPrefix: "dft"} // unusual names, in case
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- defaultNamespaceSteps(cfg, ns)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := nlHandle(t, ns).LinkByName("dfltbr0"); !isNotFound(err) {
		t.Fatalf("after Teardown, dfltbr0 lookup = %v, want not found", err)
	}
}

// defaultNamespaceSteps runs a VM's network life with a Host on the
// current thread's namespace, which must be ns.
func defaultNamespaceSteps(cfg Config, ns netns.NsHandle) (err error) {
	ctx := context.Background()
	h, err := NewHost(cfg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.Teardown(ctx), h.Close()) }()
	if err := h.Setup(ctx); err != nil {
		return err
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	if _, err := nl.LinkByName(cfg.Bridge); err != nil {
		return fmt.Errorf("the bridge is not in the test namespace: %w", err)
	}
	if ps := h.Check(ctx); len(ps) != 0 {
		return fmt.Errorf("check after setup: %v", ps)
	}
	tap, err := h.CreateTAP(ctx, "vm-dflt")
	if err != nil {
		return err
	}
	slot := slotFor("vm-dflt", tap, "172.30.0.2")
	if err := h.SyncRules(ctx, []Slot{slot}); err != nil {
		return err
	}
	if err := wantRuleset(h, slot); err != nil {
		return err
	}
	// And one VM at a time, over the lasting connection.
	if err := h.RemoveSlot(ctx, slot.VMID); err != nil {
		return err
	}
	if err := wantRuleset(h); err != nil {
		return err
	}
	if err := h.AddSlot(ctx, slot); err != nil {
		return err
	}
	if err := wantRuleset(h, slot); err != nil {
		return err
	}
	return h.DeleteTAP(ctx, tap)
}

// wantRuleset reports whether the kernel holds the ruleset for slots.
func wantRuleset(h *Host, slots ...Slot) error {
	got, err := listRuleset(h)
	if err != nil {
		return err
	}
	if want := dumpRuleset(buildRuleset(h.Config(), h.HostRoutes(), slots)); got != want {
		return fmt.Errorf("kernel ruleset differs:\n%s---\n%s", got, want)
	}
	return nil
}
