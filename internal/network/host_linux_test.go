package network

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

func TestSetupIdempotent(t *testing.T) {
	requireRoot(t)
	rootFwd := rootIPForward(t)
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := newTestHost(t, ns, Config{HostPorts: []PortRule{{"tcp", 22}}})
	ctx := context.Background()
	// A new namespace may inherit forwarding from its creator's (hosts
	// differ): start from "off" so Check has all three problems to find.
	if err := writeSysctl(ns, ipForwardPath, "0"); err != nil {
		t.Fatal(err)
	}

	if ps := h.Check(ctx); len(ps) != 3 {
		t.Errorf("Check before Setup = %v, want 3 problems (bridge, ip_forward, nftables)", ps)
	}
	if err := h.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	type state struct {
		index       int
		mac, alias  string
		addrs       []string
		up          bool
		rules       string
		forwardFlag string
	}
	snapshot := func() state {
		br, err := nl.LinkByName("hearth0")
		if err != nil {
			t.Fatal(err)
		}
		fwd, err := readSysctl(ns, ipForwardPath)
		if err != nil {
			t.Fatal(err)
		}
		a := br.Attrs()
		return state{a.Index, a.HardwareAddr.String(), a.Alias, linkAddrs(t, nl, br), isUp(br), mustList(t, h), fwd}
	}
	first := snapshot()
	if err := h.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	second := snapshot()
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("second Setup changed state:\n%+v\n%+v", first, second)
	}
	if want := []string{"172.30.0.1/24"}; !slices.Equal(first.addrs, want) || !first.up || first.forwardFlag != "1" {
		t.Fatalf("after Setup: addrs %v up %v ip_forward %s", first.addrs, first.up, first.forwardFlag)
	}
	if first.mac != bridgeMAC("hearth0").String() || first.alias != bridgeAlias {
		t.Fatalf("bridge mac %s alias %q", first.mac, first.alias)
	}
	if want := dumpRuleset(buildRuleset(h.Config(), h.HostRoutes(), nil)); first.rules != want {
		t.Fatalf("kernel ruleset differs from the baseline hearth built:\n--- kernel\n%s--- built\n%s", first.rules, want)
	}
	if ps := h.Check(ctx); len(ps) != 0 {
		t.Fatalf("Check after Setup = %v", ps)
	}
	if got := rootIPForward(t); got != rootFwd {
		t.Fatalf("the test process's own ip_forward changed from %s to %s", rootFwd, got)
	}
}

func TestSetupKeepsExistingRules(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := setupHost(t, ns, Config{})
	ctx := context.Background()
	tap, err := h.CreateTAP(ctx, "vm-keep")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SyncRules(ctx, []Slot{slotFor("vm-keep", tap, "172.30.0.9")}); err != nil {
		t.Fatal(err)
	}
	before := mustList(t, h)
	if err := h.Setup(ctx); err != nil { // e.g. a daemon restart
		t.Fatal(err)
	}
	if after := mustList(t, h); after != before {
		t.Fatalf("Setup replaced existing rules:\n%s\n---\n%s", before, after)
	}
}

func TestSetupRefusesForeignBridge(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	addForeignLink(t, nlHandle(t, ns), "hearth0", "")
	h := newTestHost(t, ns, Config{})
	err := h.Setup(context.Background())
	if !errors.Is(err, ErrNotOwned) {
		t.Fatalf("Setup with a foreign hearth0 = %v, want ErrNotOwned", err)
	}
	ps := h.Check(context.Background())
	if len(ps) == 0 || ps[0].Check != "bridge" || !strings.Contains(ps[0].Fix, "network.bridge") {
		t.Fatalf("Check = %v, want a bridge problem", ps)
	}
}

func TestCheckFindsProblems(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := setupHost(t, ns, Config{})
	br, err := nl.LinkByName("hearth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range must(nl.AddrList(br, netlink.FAMILY_V4))(t) {
		if err := nl.AddrDel(br, &a); err != nil {
			t.Fatal(err)
		}
	}
	if err := nl.LinkSetDown(br); err != nil {
		t.Fatal(err)
	}
	if err := writeSysctl(ns, ipForwardPath, "0"); err != nil {
		t.Fatal(err)
	}
	c := must(h.nftConn())(t)
	c.DelTable(&nftables.Table{Name: tableName, Family: nftables.TableFamilyBridge})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range h.Check(context.Background()) {
		if p.Fix == "" {
			t.Errorf("problem without a fix: %v", p)
		}
		got = append(got, p.Check+": "+p.Message)
	}
	want := []string{
		"bridge: bridge hearth0 lacks address 172.30.0.1/24 (has none)",
		"bridge: bridge hearth0 is down",
		"ip_forward: IPv4 forwarding is off",
		"nftables: hearth's firewall is incomplete: missing [bridge hearth prerouting bridge hearth forward bridge hearth map vm_ports]",
	}
	if len(got) != len(want) {
		t.Fatalf("Check = %q, want %q", got, want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want %q...", i, got[i], want[i])
		}
	}
	// Setup repairs all of it.
	if err := h.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ps := h.Check(context.Background()); len(ps) != 0 {
		t.Fatalf("Check after repairing Setup = %v", ps)
	}
}

// must is a test helper: it fails the test on err.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestCreateTAP(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := setupHost(t, ns, Config{})
	ctx := context.Background()

	name, err := h.CreateTAP(ctx, "vm-one")
	if err != nil {
		t.Fatal(err)
	}
	if want := TAPName("hth", "vm-one", 0); name != want {
		t.Fatalf("CreateTAP = %s, want %s", name, want)
	}
	again, err := h.CreateTAP(ctx, "vm-one")
	if err != nil || again != name {
		t.Fatalf("second CreateTAP = %q, %v; want %q", again, err, name)
	}
	link := must(nl.LinkByName(name))(t)
	br := must(nl.LinkByName("hearth0"))(t)
	tap, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s, want a tuntap", name, link.Type())
	}
	a := tap.Attrs()
	switch {
	case a.Alias != "hearth:vm-one":
		t.Errorf("alias %q", a.Alias)
	case a.MasterIndex != br.Attrs().Index:
		t.Errorf("master %d, want the bridge (%d)", a.MasterIndex, br.Attrs().Index)
	case !isUp(tap):
		t.Errorf("tap is down")
	case tap.Mode != netlink.TUNTAP_MODE_TAP:
		t.Errorf("mode %v, want tap", tap.Mode)
	case tap.NonPersist:
		t.Errorf("tap is not persistent")
	case tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Errorf("tap is multi-queue; QEMU's default single-queue open would fail")
	case tap.Owner != 0:
		t.Errorf("owner %d, want 0 (root)", tap.Owner)
	}
	taps := must(h.TAPs(ctx))(t)
	if len(taps) != 1 || taps[name] != "vm-one" {
		t.Fatalf("TAPs() = %v", taps)
	}
	if of := must(h.TAPsOf(ctx, "vm-one"))(t); !slices.Equal(of, []string{name}) {
		t.Fatalf("TAPsOf(vm-one) = %v, want [%s]", of, name)
	}
	if of := must(h.TAPsOf(ctx, "vm-other"))(t); len(of) != 0 {
		t.Fatalf("TAPsOf(vm-other) = %v, want none", of)
	}

	// A TAP knocked off the bridge and down is repaired by CreateTAP.
	if err := nl.LinkSetNoMaster(link); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	if again, err := h.CreateTAP(ctx, "vm-one"); err != nil || again != name {
		t.Fatalf("CreateTAP after detaching = %q, %v", again, err)
	}
	link = must(nl.LinkByName(name))(t)
	if link.Attrs().MasterIndex != br.Attrs().Index || !isUp(link) {
		t.Fatalf("CreateTAP did not re-attach the tap")
	}

	if err := h.DeleteTAP(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := h.DeleteTAP(ctx, name); err != nil {
		t.Fatalf("second DeleteTAP = %v, want nil", err)
	}
	if taps := must(h.TAPs(ctx))(t); len(taps) != 0 {
		t.Fatalf("TAPs() after delete = %v", taps)
	}
	if of := must(h.TAPsOf(ctx, "vm-one"))(t); len(of) != 0 {
		t.Fatalf("TAPsOf(vm-one) after delete = %v", of)
	}
}

func TestCreateTAPNeedsBridge(t *testing.T) {
	requireRoot(t)
	h := newTestHost(t, newNetNS(t), Config{})
	if _, err := h.CreateTAP(context.Background(), "vm-x"); err == nil || !strings.Contains(err.Error(), "run setup first") {
		t.Fatalf("CreateTAP without a bridge = %v", err)
	}
}

func TestCreateTAPCollision(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := setupHost(t, ns, Config{})
	taken := TAPName("hth", "vm-clash", 0)
	addForeignLink(t, nl, taken, "")

	name, err := h.CreateTAP(context.Background(), "vm-clash")
	if err != nil {
		t.Fatal(err)
	}
	if want := TAPName("hth", "vm-clash", 1); name != want {
		t.Fatalf("CreateTAP = %s, want the next attempt's name %s", name, want)
	}
	other := must(nl.LinkByName(taken))(t)
	if other.Type() != "bridge" || other.Attrs().Alias != "" || other.Attrs().MasterIndex != 0 || isUp(other) {
		t.Fatalf("the other link was changed: type %s alias %q master %d up %v",
			other.Type(), other.Attrs().Alias, other.Attrs().MasterIndex, isUp(other))
	}
	if taps := must(h.TAPs(context.Background()))(t); len(taps) != 1 || taps[name] != "vm-clash" {
		t.Fatalf("TAPs() = %v", taps)
	}
	// The foreign link under the first name is not the VM's.
	if of := must(h.TAPsOf(context.Background(), "vm-clash"))(t); !slices.Equal(of, []string{name}) {
		t.Fatalf("TAPsOf(vm-clash) = %v, want [%s]", of, name)
	}
	// Once the first name is free, CreateTAP still finds the VM's TAP.
	if err := nl.LinkDel(other); err != nil {
		t.Fatal(err)
	}
	if again, err := h.CreateTAP(context.Background(), "vm-clash"); err != nil || again != name {
		t.Fatalf("CreateTAP with the first name free again = %q, %v; want %q", again, err, name)
	}
}

func TestDeleteTAPRefusesForeignLinks(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := setupHost(t, ns, Config{})
	addForeignLink(t, nl, "hthforeign", "")            // our prefix, no alias
	addForeignLink(t, nl, "other0", "hearth:vm-other") // our alias, not our prefix
	for _, name := range []string{"hthforeign", "other0", "hearth0"} {
		if err := h.DeleteTAP(context.Background(), name); !errors.Is(err, ErrNotOwned) {
			t.Errorf("DeleteTAP(%s) = %v, want ErrNotOwned", name, err)
		}
		if _, err := nl.LinkByName(name); err != nil {
			t.Errorf("%s is gone: %v", name, err)
		}
	}
	if err := h.DeleteTAP(context.Background(), "hthmissing"); err != nil {
		t.Errorf("DeleteTAP of a missing link = %v, want nil", err)
	}
	if taps := must(h.TAPs(context.Background()))(t); len(taps) != 0 {
		t.Fatalf("TAPs() lists foreign links: %v", taps)
	}
}

func TestCreateTAPConcurrent(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), Config{})
	const n = 20
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { names[i], errs[i] = h.CreateTAP(context.Background(), fmt.Sprintf("vm-%02d", i)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	taps := must(h.TAPs(context.Background()))(t)
	if len(taps) != n {
		t.Fatalf("TAPs() has %d entries, want %d", len(taps), n)
	}
	for i, name := range names {
		if id := fmt.Sprintf("vm-%02d", i); taps[name] != id {
			t.Errorf("TAPs()[%s] = %q, want %q", name, taps[name], id)
		}
	}
}

func TestSyncRulesMatchesKernel(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := setupHost(t, ns, goldenConfig())
	slots := goldenSlots()
	if err := h.SyncRules(context.Background(), slots); err != nil {
		t.Fatal(err)
	}
	norm := must(normalizeSlots(h.Config(), slots))(t)
	if got, want := mustList(t, h), dumpRuleset(buildRuleset(h.Config(), h.HostRoutes(), norm)); got != want {
		t.Fatalf("kernel ruleset differs from what hearth built:\n--- kernel\n%s--- built\n%s", got, want)
	}
	if err := h.SyncRules(context.Background(), []Slot{{VMID: "bad"}}); err == nil {
		t.Fatal("SyncRules accepted an invalid slot")
	}
}

// TestSyncRulesLeavesOtherTables checks that hearth only ever replaces or
// deletes its own tables.
func TestSyncRulesLeavesOtherTables(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := newTestHost(t, ns, Config{})
	c := must(h.nftConn())(t)
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge, nftables.TableFamilyIPv4} {
		other := c.AddTable(&nftables.Table{Name: "other", Family: fam})
		ch := c.AddChain(&nftables.Chain{Name: "forward", Table: other, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: other, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	listOthers := func() string {
		var b strings.Builder
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge, nftables.TableFamilyIPv4} {
			tbl := &nftables.Table{Name: "other", Family: fam}
			rules, err := c.GetRules(tbl, &nftables.Chain{Name: "forward", Table: tbl})
			if err != nil {
				t.Fatalf("table %s other: %v", familyName(fam), err)
			}
			fmt.Fprintf(&b, "%s: %d rules\n", familyName(fam), len(rules))
		}
		return b.String()
	}
	before := listOthers()
	ctx := context.Background()
	if err := h.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	tap := must(h.CreateTAP(ctx, "vm-x"))(t)
	if err := h.SyncRules(ctx, []Slot{slotFor("vm-x", tap, "172.30.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := h.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if after := listOthers(); after != before {
		t.Fatalf("other tables changed:\n%s---\n%s", before, after)
	}
	if got := mustList(t, h); got != "" {
		t.Fatalf("Teardown left hearth tables:\n%s", got)
	}
}

// TestCreateDeleteCycles runs a VM's network life 200 times and checks that
// nothing is left behind: no TAPs, and the ruleset is the baseline again,
// byte for byte. The rules change one VM at a time (AddSlot, RemoveSlot),
// or by rebuilding everything (SyncRules).
func TestCreateDeleteCycles(t *testing.T) {
	requireRoot(t)
	t.Run("AddSlot", func(t *testing.T) { createDeleteCycles(t, slotOps{add: addOne, remove: removeOne}) })
	t.Run("SyncRules", func(t *testing.T) { createDeleteCycles(t, slotOps{add: syncWith, remove: syncWithout}) })
}

// slotOps install and remove one slot's rules, given the slots that stay.
type slotOps struct {
	add, remove func(ctx context.Context, h *Host, stay []Slot, s Slot) error
}

func addOne(ctx context.Context, h *Host, _ []Slot, s Slot) error { return h.AddSlot(ctx, s) }
func removeOne(ctx context.Context, h *Host, _ []Slot, s Slot) error {
	return h.RemoveSlot(ctx, s.VMID)
}

func syncWith(ctx context.Context, h *Host, stay []Slot, s Slot) error {
	return h.SyncRules(ctx, append(slices.Clone(stay), s))
}

func syncWithout(ctx context.Context, h *Host, stay []Slot, _ Slot) error {
	return h.SyncRules(ctx, stay)
}

func createDeleteCycles(t *testing.T, ops slotOps) {
	ns := newNetNS(t)
	h := setupHost(t, ns, Config{HostPorts: []PortRule{{"tcp", 22}}})
	ctx := context.Background()
	baseline := mustList(t, h)
	var others []Slot // a few long-lived VMs, so the ruleset is not trivially empty
	for i := range 3 {
		id := fmt.Sprintf("vm-stay-%d", i)
		s := slotFor(id, must(h.CreateTAP(ctx, id))(t), fmt.Sprintf("172.30.0.%d", 200+i))
		if err := ops.add(ctx, h, others, s); err != nil {
			t.Fatal(err)
		}
		others = append(others, s)
	}
	withOthers := mustList(t, h)

	var tCreate, tAdd, tDelete, tRemove time.Duration
	const cycles = 200
	for i := range cycles {
		id := fmt.Sprintf("vm-cycle-%d", i)
		start := time.Now()
		tap, err := h.CreateTAP(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		tCreate += time.Since(start)
		start = time.Now()
		slot := slotFor(id, tap, fmt.Sprintf("172.30.0.%d", 2+i%150))
		slot.Egress = []EgressPolicy{{Mode: EgressOpen}, {Mode: EgressNone}, {Mode: EgressAllowlist, Allow: []AllowRule{{CIDR: DefaultSubnet}}}}[i%3]
		if err := ops.add(ctx, h, others, slot); err != nil {
			t.Fatal(err)
		}
		tAdd += time.Since(start)
		start = time.Now()
		if err := h.DeleteTAP(ctx, tap); err != nil {
			t.Fatal(err)
		}
		tDelete += time.Since(start)
		start = time.Now()
		if err := ops.remove(ctx, h, others, slot); err != nil {
			t.Fatal(err)
		}
		tRemove += time.Since(start)
	}
	t.Logf("per VM (average of %d): CreateTAP %v, rules +1 %v, DeleteTAP %v, rules -1 %v",
		cycles, tCreate/cycles, tAdd/cycles, tDelete/cycles, tRemove/cycles)

	if got := mustList(t, h); got != withOthers {
		t.Fatalf("ruleset after %d cycles differs:\n--- got\n%s--- want\n%s", cycles, got, withOthers)
	}
	for len(others) > 0 {
		s := others[len(others)-1]
		others = others[:len(others)-1]
		if err := h.DeleteTAP(ctx, s.TAP); err != nil {
			t.Fatal(err)
		}
		if err := ops.remove(ctx, h, others, s); err != nil {
			t.Fatal(err)
		}
	}
	if taps := must(h.TAPs(ctx))(t); len(taps) != 0 {
		t.Fatalf("TAPs() after the cycles = %v", taps)
	}
	links := must(h.links())(t)
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "hth") {
			t.Errorf("link %s left behind", l.Attrs().Name)
		}
	}
	if got := mustList(t, h); got != baseline {
		t.Fatalf("ruleset with zero slots differs from the baseline:\n--- got\n%s--- want\n%s", got, baseline)
	}
	// The baseline is also what a fresh Setup installs.
	if got, want := baseline, dumpRuleset(buildRuleset(h.Config(), h.HostRoutes(), nil)); got != want {
		t.Fatalf("baseline differs from a fresh Setup's:\n--- got\n%s--- want\n%s", got, want)
	}
}
