package network

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// Tests of AddSlot and RemoveSlot against the kernel. The reference is
// buildRuleset, which SyncRules installs as is (TestSyncRulesMatchesKernel):
// after any sequence of AddSlot and RemoveSlot the kernel must hold what
// SyncRules would install for the slots that remain.

// mustAdd and mustRemove fail the test on error.
func mustAdd(t *testing.T, h *Host, slots ...Slot) {
	t.Helper()
	for _, s := range slots {
		if err := h.AddSlot(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
}

func mustRemove(t *testing.T, h *Host, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := h.RemoveSlot(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

// wantSlots fails the test unless the kernel holds exactly the ruleset
// SyncRules would install for slots.
func wantSlots(t *testing.T, h *Host, what string, slots ...Slot) {
	t.Helper()
	norm := must(normalizeSlots(h.Config(), slots))(t)
	if got, want := mustList(t, h), dumpRuleset(buildRuleset(h.Config(), h.HostRoutes(), norm)); got != want {
		t.Fatalf("%s: kernel ruleset differs from SyncRules' for %d slots:\n--- kernel\n%s--- want\n%s", what, len(slots), got, want)
	}
}

func goldenSlot(t *testing.T, id string) Slot {
	t.Helper()
	for _, s := range goldenSlots() {
		if s.VMID == id {
			return s
		}
	}
	t.Fatalf("no golden slot %s", id)
	return Slot{}
}

// TestAddRemoveEqualsSyncRules builds the same slots both ways in two
// namespaces (add A, B, C and remove B; SyncRules with A and C) and
// compares the kernels' listings.
func TestAddRemoveEqualsSyncRules(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	a, b, c := goldenSlot(t, "vm-open"), goldenSlot(t, "vm-allow"), goldenSlot(t, "vm-none")

	inc := setupHost(t, newNetNS(t), goldenConfig())
	mustAdd(t, inc, c, a, b)
	wantSlots(t, inc, "after adding C, A, B", a, b, c)
	mustRemove(t, inc, b.VMID)

	full := setupHost(t, newNetNS(t), goldenConfig())
	if err := full.SyncRules(ctx, []Slot{a, c}); err != nil {
		t.Fatal(err)
	}
	if got, want := mustList(t, inc), mustList(t, full); got != want {
		t.Fatalf("add A,B,C, remove B differs from SyncRules([A,C]):\n--- incremental\n%s--- SyncRules\n%s", got, want)
	}
	// And back: the remaining slots removed one by one give SyncRules(nil).
	mustRemove(t, inc, a.VMID, c.VMID)
	if err := full.SyncRules(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := mustList(t, inc), mustList(t, full); got != want {
		t.Fatalf("everything removed differs from SyncRules(nil):\n--- incremental\n%s--- SyncRules\n%s", got, want)
	}
}

// TestAddRemoveRandom applies random additions, replacements (another
// policy, address or TAP) and removals, and checks the kernel against
// SyncRules' ruleset after each.
func TestAddRemoveRandom(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), Config{HostPorts: []PortRule{{"tcp", 22}}})
	rng := rand.New(rand.NewPCG(1, 2))
	policies := []EgressPolicy{
		{Mode: EgressOpen},
		{Mode: EgressNone},
		{Mode: EgressAllowlist, Allow: []AllowRule{{CIDR: netip.MustParsePrefix("203.0.113.0/24"), Protocol: "tcp", Port: 443}}},
		{Mode: EgressAllowlist, Allow: []AllowRule{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, {CIDR: netip.MustParsePrefix("192.0.2.1/32"), Protocol: "udp"}}},
	}
	resident := map[string]Slot{}
	for step := range 60 {
		id := fmt.Sprintf("vm-%d", rng.IntN(8))
		if _, ok := resident[id]; ok && rng.IntN(3) == 0 {
			mustRemove(t, h, id)
			delete(resident, id)
		} else {
			// Addresses and TAPs are drawn per VM from disjoint ranges, so
			// that a replacement may move them without clashing.
			n := int(id[len(id)-1] - '0')
			s := slotFor(id, TAPName("hth", id, rng.IntN(2)), fmt.Sprintf("172.30.0.%d", 10+n*10+rng.IntN(3)))
			s.Egress = policies[rng.IntN(len(policies))]
			mustAdd(t, h, s)
			resident[id] = s
		}
		wantSlots(t, h, fmt.Sprintf("step %d", step), slices.Collect(maps.Values(resident))...)
	}
}

// baseChains renders hearth's base chains with their rules' handles: equal
// renderings mean the very same rules, never replaced or moved.
func baseChains(t *testing.T, h *Host) string {
	t.Helper()
	c := must(h.nftConn())(t)
	var b strings.Builder
	for _, tbl := range hearthTables() {
		for _, name := range expectedChains()[tbl.Family] {
			rules := must(c.GetRules(tbl, &nftables.Chain{Name: name, Table: tbl}))(t)
			fmt.Fprintf(&b, "%s %s:", familyName(tbl.Family), name)
			for _, r := range rules {
				fmt.Fprintf(&b, " #%d", r.Handle)
			}
			b.WriteString("\n")
			dumpChain(&b, &nftables.Chain{Name: name}, rules)
		}
	}
	return b.String()
}

// TestAddRemoveLeaveBaseChains checks that adding and removing VMs never
// touches the base chains, so their final drops stay last: the same rules
// with the same handles, in the same order, as right after Setup.
func TestAddRemoveLeaveBaseChains(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), goldenConfig())
	before := baseChains(t, h)
	for _, want := range []string{"egress", "prerouting"} {
		if !strings.Contains(before, "chain "+want) {
			t.Fatalf("no chain %s in\n%s", want, before)
		}
	}
	slots := goldenSlots()
	mustAdd(t, h, slots...)
	moved := slots[0]
	moved.IP, moved.TAP = netip.MustParseAddr("172.30.0.99"), TAPName("hth", moved.VMID, 1)
	mustAdd(t, h, moved)
	mustRemove(t, h, slots[1].VMID)
	if after := baseChains(t, h); after != before {
		t.Fatalf("base chains changed:\n--- before\n%s--- after\n%s", before, after)
	}
	// The egress chain drops what no VM reaches (link-local and metadata
	// services, the operator's denies, the host's addresses), sends the
	// operator's private exceptions to the VM's chain, drops the other
	// private ranges and the host's routes, then dispatches and ends in a
	// drop; the bridge's prerouting ends in a drop of every hearth TAP;
	// the verdict maps come first there.
	rs := buildRuleset(h.Config(), h.HostRoutes(), nil)
	for _, ch := range append(rs.inet.chains, rs.bridge.chains...) {
		switch ch.chain.Name {
		case chainEgress:
			drop := func(cidr string) string { return "meta nfproto ipv4 ip daddr " + cidr + " drop" }
			wantTexts(t, ch, drop("169.254.0.0/16"), drop("168.63.129.16"), drop("100.100.100.200"),
				drop("203.0.113.128/25"), "fib daddr type local drop",
				"meta nfproto ipv4 ip daddr 10.20.0.0/16 ip saddr vmap @vm_egress",
				drop("0.0.0.0/8"), drop("10.0.0.0/8"), drop("100.64.0.0/10"), drop("127.0.0.0/8"),
				drop("172.16.0.0/12"), drop("192.168.0.0/16"), drop("224.0.0.0/4"), drop("240.0.0.0/4"),
				"jump host_routes", "meta nfproto ipv4 ip saddr vmap @vm_egress", "drop")
		case chainPre:
			wantTexts(t, ch, "iifname vmap @vm_ports", `iifname "hth*" drop`)
		}
	}
}

func wantTexts(t *testing.T, c *chainSpec, want ...string) {
	t.Helper()
	var got []string
	for _, r := range c.rules {
		got = append(got, r.text)
	}
	if !slices.Equal(got, want) {
		t.Errorf("chain %s = %q, want %q", c.chain.Name, got, want)
	}
}

func TestAddSlotIdempotentAndReplaces(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), goldenConfig())
	baseline := mustList(t, h)
	a, b := goldenSlot(t, "vm-open"), goldenSlot(t, "vm-allow")

	mustAdd(t, h, a, b)
	once := mustList(t, h)
	mustAdd(t, h, a, b)
	if got := mustList(t, h); got != once {
		t.Fatalf("adding the same slots again changed the ruleset:\n--- got\n%s--- want\n%s", got, once)
	}
	wantSlots(t, h, "added twice", a, b)

	a.Egress = EgressPolicy{Mode: EgressNone}
	mustAdd(t, h, a)
	wantSlots(t, h, "new policy", a, b)

	a.IP, a.TAP = netip.MustParseAddr("172.30.0.50"), TAPName("hth", a.VMID, 2)
	mustAdd(t, h, a)
	wantSlots(t, h, "new address and tap", a, b)

	mustRemove(t, h, a.VMID, a.VMID, "vm-never-added")
	wantSlots(t, h, "removed", b)
	mustRemove(t, h, b.VMID)
	if got := mustList(t, h); got != baseline {
		t.Fatalf("all removed differs from the baseline:\n--- got\n%s--- want\n%s", got, baseline)
	}
}

// TestAddSlotConflict checks that a slot whose address or TAP is another
// VM's is refused as a whole.
func TestAddSlotConflict(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), goldenConfig())
	ctx := context.Background()
	a, b := goldenSlot(t, "vm-open"), goldenSlot(t, "vm-allow")
	mustAdd(t, h, a, b)
	before := mustList(t, h)

	sameIP := slotFor("vm-new", TAPName("hth", "vm-new", 0), a.IP.String())
	sameTAP := slotFor("vm-new", a.TAP, "172.30.0.77")
	bMoved := b
	bMoved.IP = a.IP // a replacement onto another VM's address
	for name, s := range map[string]Slot{"same ip": sameIP, "same tap": sameTAP, "replacement onto a's ip": bMoved} {
		err := h.AddSlot(ctx, s)
		if !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("%s: AddSlot = %v, want ErrConflict", name, err)
		}
		if got := mustList(t, h); got != before {
			t.Fatalf("%s: a refused AddSlot changed the ruleset:\n--- got\n%s--- want\n%s", name, got, before)
		}
	}
	if err := h.AddSlot(ctx, Slot{VMID: "bad"}); err == nil || errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("AddSlot of an invalid slot = %v, want a validation error", err)
	}
	if err := h.RemoveSlot(ctx, ""); err == nil {
		t.Error("RemoveSlot of an empty id succeeded")
	}
}

func TestAddSlotNeedsSetup(t *testing.T) {
	requireRoot(t)
	h := newTestHost(t, newNetNS(t), Config{})
	if err := h.AddSlot(context.Background(), goldenSlot(t, "vm-open")); err == nil {
		t.Fatal("AddSlot without tables succeeded")
	}
	if err := h.RemoveSlot(context.Background(), "vm-open"); err != nil {
		t.Fatalf("RemoveSlot without tables = %v, want nil (nothing to remove)", err)
	}
}

// TestSetupReplacesOldLayout covers an upgrade: tables with the base
// chains but none of the maps (the layout before per-VM chains) are
// replaced by the baseline.
func TestSetupReplacesOldLayout(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := newTestHost(t, ns, Config{})
	var b batch
	for _, ts := range buildRuleset(h.Config(), h.HostRoutes(), nil).tables() {
		b.addTable(ts.table)
		for _, ch := range ts.chains {
			b.addChain(ch.chain)
		}
	}
	h.nftMu.Lock()
	err := h.commit(&b)
	h.nftMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	missing := must(h.missingObjects())(t)
	if want := []string{"inet hearth map vm_egress", "bridge hearth map vm_ports"}; !slices.Equal(missing, want) {
		t.Fatalf("missing = %q, want %q", missing, want)
	}
	if err := h.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantSlots(t, h, "after Setup")
	mustAdd(t, h, goldenSlots()...)
	wantSlots(t, h, "after adding", goldenSlots()...)
}

// TestAddRemoveConcurrent adds and removes VMs from many goroutines.
func TestAddRemoveConcurrent(t *testing.T) {
	requireRoot(t)
	h := setupHost(t, newNetNS(t), Config{})
	const n = 24
	slots := make([]Slot, n)
	for i := range slots {
		id := fmt.Sprintf("vm-conc-%02d", i)
		slots[i] = slotFor(id, TAPName("hth", id, 0), fmt.Sprintf("172.30.0.%d", 10+i))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, s := range slots {
		wg.Go(func() {
			ctx := context.Background()
			if errs[i] = h.AddSlot(ctx, s); errs[i] == nil && i%2 == 1 {
				errs[i] = h.RemoveSlot(ctx, s.VMID)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var kept []Slot
	for i, s := range slots {
		if i%2 == 0 {
			kept = append(kept, s)
		}
	}
	wantSlots(t, h, "after concurrent adds and removes", kept...)
}

// scaleSlots returns n slots in c's subnet, every third with an allowlist
// and every fifth with a VM id of the maximal length (long comments).
func scaleSlots(c Config, n int) []Slot {
	slots := make([]Slot, 0, n)
	ip := c.Gateway().Next()
	for i := range n {
		id := fmt.Sprintf("vm-%05d", i)
		if i%5 == 0 {
			id += "-" + strings.Repeat("x", maxVMIDLen-len(id)-1)
		}
		s := slotFor(id, TAPName(c.TAPPrefix, id, 0), ip.String())
		if i%3 == 1 {
			s.Egress = EgressPolicy{Mode: EgressAllowlist, Allow: []AllowRule{
				{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Protocol: "tcp", Port: 443},
				{CIDR: netip.MustParsePrefix("10.0.0.0/8")},
			}}
		}
		slots = append(slots, s)
		ip = ip.Next()
	}
	return slots
}

// TestScale1000 rebuilds 1000 VMs' rules (a /22) in one transaction, again
// over themselves (a daemon restart), and adds and removes a VM among
// them. Before the socket buffers were sized, 33 slots failed (ENOBUFS).
func TestScale1000(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("slow")
	}
	ctx := context.Background()
	h := setupHost(t, newNetNS(t), Config{Subnet: netip.MustParsePrefix("172.30.0.0/22")})
	slots := scaleSlots(h.Config(), 1001)
	extra, slots := slots[1000], slots[:1000]
	for round := range 2 {
		start := time.Now()
		if err := h.SyncRules(ctx, slots); err != nil {
			t.Fatal(err)
		}
		t.Logf("SyncRules(%d slots), round %d: %v", len(slots), round, time.Since(start))
	}
	wantSlots(t, h, "SyncRules(1000)", slots...)

	start := time.Now()
	mustAdd(t, h, extra)
	added := time.Since(start)
	start = time.Now()
	mustRemove(t, h, extra.VMID)
	t.Logf("with %d resident: AddSlot %v, RemoveSlot %v", len(slots), added, time.Since(start))
	mustRemove(t, h, slots[500].VMID)
	wantSlots(t, h, "1000 synced, one removed", slices.Delete(slices.Clone(slots), 500, 501)...)
}

// TestIncrementalCostFlat checks that AddSlot and RemoveSlot cost about
// the same with 10 and with 500 VMs resident (generous bound: they do the
// same netlink work; the kernel's commit does a little more).
func TestIncrementalCostFlat(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("slow")
	}
	ctx := context.Background()
	h := setupHost(t, newNetNS(t), Config{Subnet: netip.MustParsePrefix("172.30.0.0/22")})
	all := scaleSlots(h.Config(), 520)
	probe := all[500:]
	cycle := func() time.Duration {
		start := time.Now()
		for _, s := range probe {
			mustAdd(t, h, s)
			mustRemove(t, h, s.VMID)
		}
		return time.Since(start) / time.Duration(len(probe))
	}
	if err := h.SyncRules(ctx, all[:10]); err != nil {
		t.Fatal(err)
	}
	few := cycle()
	if err := h.SyncRules(ctx, all[:500]); err != nil {
		t.Fatal(err)
	}
	many := cycle()
	t.Logf("AddSlot+RemoveSlot: %v with 10 resident, %v with 500", few, many)
	if many > 3*few+2*time.Millisecond {
		t.Errorf("AddSlot+RemoveSlot with 500 resident (%v) is much slower than with 10 (%v)", many, few)
	}
}

// TestSlotKeysRoundTrip checks that the keys RemoveSlot reads back from a
// VM's bridge chain are the slot's.
func TestSlotKeysRoundTrip(t *testing.T) {
	for _, s := range goldenSlots() {
		v := buildVM(s)
		var rules []*nftables.Rule
		for _, r := range v.port.chain.rules {
			rules = append(rules, r.nftRule(v.port.chain.chain))
		}
		tap, ip, ok := slotKeys(rules)
		if !ok || tap != s.TAP || ip != s.IP {
			t.Errorf("slotKeys(%s) = %q, %s, %v; want %q, %s", s.VMID, tap, ip, ok, s.TAP, s.IP)
		}
	}
	if _, _, ok := slotKeys(nil); ok {
		t.Error("slotKeys(nil) found keys")
	}
}

func TestBaseChainsAreNotVMChains(t *testing.T) {
	for _, names := range expectedChains() {
		for _, name := range names {
			if isVMChain(name) {
				t.Errorf("base chain %s looks like a VM's", name)
			}
		}
	}
}
