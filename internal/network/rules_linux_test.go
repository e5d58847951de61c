package network

import (
	"net/netip"
	"testing"

	"github.com/hearth-project/hearth/test/golden"
)

// goldenConfig, goldenRoutes and goldenSlots are a fixed configuration,
// the host's routes and one VM of each egress mode.
func goldenConfig() Config {
	return Config{
		HostPorts:    []PortRule{{"udp", 53}, {"tcp", 8080}, {"tcp", 53}},
		Deny:         []netip.Prefix{netip.MustParsePrefix("203.0.113.128/25")},
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("10.20.5.0/24")},
	}.WithDefaults()
}

func goldenRoutes() []netip.Prefix {
	return aggregate([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.8.0.0/24")})
}

func goldenSlots() []Slot {
	slot := func(id, ip string, egress EgressPolicy) Slot {
		return Slot{VMID: id, TAP: TAPName("hth", id, 0), MAC: MACFor(id), IP: netip.MustParseAddr(ip), Egress: egress}
	}
	return []Slot{
		slot("vm-none", "172.30.0.4", EgressPolicy{Mode: "none"}),
		slot("vm-open", "172.30.0.2", EgressPolicy{Mode: "open"}),
		slot("vm-allow", "172.30.0.3", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{
			{CIDR: netip.MustParsePrefix("198.51.100.0/24"), Protocol: "tcp", Port: 443},
			{CIDR: netip.MustParsePrefix("203.0.113.7/32"), Protocol: "udp"},
			{CIDR: netip.MustParsePrefix("10.20.0.0/16")},
		}}),
	}
}

func goldenRuleset(t *testing.T, slots []Slot) *ruleset {
	t.Helper()
	c := goldenConfig()
	norm, err := normalizeSlots(c, slots)
	if err != nil {
		t.Fatal(err)
	}
	return buildRuleset(c, goldenRoutes(), norm)
}

// TestRulesetGolden pins the generated rules in two forms: nft-like text
// (*.nft.golden, what a reviewer reads) and the netlink expressions
// (*.exprs.golden, what the kernel gets). The ct state mask is in host byte
// order, so the expression goldens are those of a little-endian machine.
func TestRulesetGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slots []Slot
	}{
		{"baseline", nil},
		{"slots", goldenSlots()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := goldenRuleset(t, tc.slots)
			golden.Check(t, tc.name+".nft.golden", rs.String())
			golden.Check(t, tc.name+".exprs.golden", dumpRuleset(rs))
		})
	}
}

func TestRulesetDeterministic(t *testing.T) {
	slots := goldenSlots()
	a := goldenRuleset(t, slots).String()
	slots[0], slots[2] = slots[2], slots[0]
	if b := goldenRuleset(t, slots).String(); a != b {
		t.Fatalf("slot order changed the ruleset:\n%s\n---\n%s", a, b)
	}
}
