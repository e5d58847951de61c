package network

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/errdefs"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.WithDefaults()
	if c.Bridge != "hearth0" || c.TAPPrefix != "hth" || c.Subnet.String() != "172.30.0.0/24" {
		t.Fatalf("defaults = %+v", c)
	}
	if got := c.Gateway().String(); got != "172.30.0.1" {
		t.Fatalf("Gateway() = %s, want 172.30.0.1", got)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if (Config{}).Gateway().IsValid() {
		t.Fatal("Gateway() of an invalid subnet must be the zero Addr")
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{}.WithDefaults()
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string // the field the error must name
	}{
		{"empty bridge", func(c *Config) { c.Bridge = "" }, "network.bridge"},
		{"long bridge", func(c *Config) { c.Bridge = "abcdefghijklmnop" }, "network.bridge"},
		{"bridge with slash", func(c *Config) { c.Bridge = "a/b" }, "network.bridge"},
		{"invalid subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, "network.subnet"},
		{"ipv6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "network.subnet"},
		{"host bits", func(c *Config) { c.Subnet = netip.MustParsePrefix("172.30.0.1/24") }, "network.subnet"},
		{"subnet too small", func(c *Config) { c.Subnet = netip.MustParsePrefix("172.30.0.0/30") }, "network.subnet"},
		{"empty prefix", func(c *Config) { c.TAPPrefix = "" }, "network.tap_prefix"},
		{"upper-case prefix", func(c *Config) { c.TAPPrefix = "HTH" }, "network.tap_prefix"},
		{"long prefix", func(c *Config) { c.TAPPrefix = "abcdefgh" }, "network.tap_prefix"},
		{"prefix matches bridge", func(c *Config) { c.TAPPrefix = "hea" }, "network.tap_prefix"},
		{"host port protocol", func(c *Config) { c.HostPorts = []PortRule{{"sctp", 1}} }, "network.host_ports[0].protocol"},
		{"host port zero", func(c *Config) { c.HostPorts = []PortRule{{"tcp", 22}, {"udp", 0}} }, "network.host_ports[1].port"},
		{"ipv6 deny", func(c *Config) { c.Deny = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} }, "network.deny[0]"},
		{"deny host bits", func(c *Config) { c.Deny = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")} }, "network.deny[0]"},
		{"invalid allow_private", func(c *Config) { c.AllowPrivate = []netip.Prefix{{}} }, "network.allow_private[0]"},
		{"allow_private host bits", func(c *Config) {
			c.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("10.1.2.3/8")}
		}, "network.allow_private[1]"},
		{"allow_private link-local", func(c *Config) { c.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32")} }, "network.allow_private[0]"},
		{"allow_private azure", func(c *Config) { c.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("168.63.129.16/32")} }, "network.allow_private[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			assertFieldError(t, c.Validate(), tc.field)
		})
	}
}

func TestEgressPolicyValidate(t *testing.T) {
	cidr := netip.MustParsePrefix("198.51.100.0/24")
	for _, tc := range []struct {
		name  string
		p     EgressPolicy
		field string // "" = valid
	}{
		{"open", EgressPolicy{Mode: "open"}, ""},
		{"none", EgressPolicy{Mode: "none"}, ""},
		{"allowlist", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{CIDR: cidr}, {CIDR: cidr, Protocol: "tcp", Port: 443}, {CIDR: cidr, Protocol: "udp"}}}, ""},
		{"empty mode", EgressPolicy{}, "egress.mode"},
		{"bad mode", EgressPolicy{Mode: "some"}, "egress.mode"},
		{"rules with open", EgressPolicy{Mode: "open", Allow: []AllowRule{{CIDR: cidr}}}, "egress.allow"},
		{"empty allowlist", EgressPolicy{Mode: "allowlist"}, "egress.allow"},
		{"missing cidr", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{}}}, "egress.allow[0].cidr"},
		{"ipv6 cidr", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{CIDR: netip.MustParsePrefix("2001:db8::/32")}}}, "egress.allow[0].cidr"},
		{"host bits", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{CIDR: cidr}, {CIDR: netip.MustParsePrefix("10.1.2.3/8")}}}, "egress.allow[1].cidr"},
		{"bad protocol", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{CIDR: cidr, Protocol: "icmp"}}}, "egress.allow[0].protocol"},
		{"port without protocol", EgressPolicy{Mode: "allowlist", Allow: []AllowRule{{CIDR: cidr, Port: 80}}}, "egress.allow[0].port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			assertFieldError(t, err, tc.field)
		})
	}
}

// TestConfigValidateDestinations: an allow_private that contains a
// metadata address is valid (the address stays denied), and so is a deny
// list that overlaps it.
func TestConfigValidateDestinations(t *testing.T) {
	c := Config{
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("10.0.0.0/8")},
		Deny:         []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("198.51.100.0/24")},
	}.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckEgress: an allow rule whose every destination the host denies
// is refused with the reason; one that only overlaps denied ranges is not.
func TestCheckEgress(t *testing.T) {
	c := Config{
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("100.64.0.0/10")},
		Deny:         []netip.Prefix{netip.MustParsePrefix("10.20.9.0/24"), netip.MustParsePrefix("203.0.113.0/24")},
	}.WithDefaults()
	routes := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	allow := func(cidrs ...string) EgressPolicy {
		p := EgressPolicy{Mode: EgressAllowlist}
		for _, s := range cidrs {
			p.Allow = append(p.Allow, AllowRule{CIDR: netip.MustParsePrefix(s), Protocol: "tcp", Port: 443})
		}
		return p
	}
	for _, tc := range []struct {
		name  string
		p     EgressPolicy
		field string // "" = accepted
		want  string // in the error
	}{
		{"open", EgressPolicy{Mode: EgressOpen}, "", ""},
		{"internet", allow("198.51.100.0/24"), "", ""},
		{"everything, on a port", allow("0.0.0.0/0"), "", ""},
		{"all of 10/8 overlaps the allowed part", allow("8.0.0.0/6"), "", ""},
		{"allowed private", allow("10.20.1.0/24"), "", ""},
		{"allowed CGNAT", allow("100.64.0.0/16"), "", ""},
		{"malformed first", EgressPolicy{Mode: EgressAllowlist}, "egress.allow", "at least one rule"},
		{"metadata", allow("198.51.100.0/24", "169.254.169.254/32"), "egress.allow[1].cidr", "link-local (169.254.0.0/16): no VM may reach it"},
		{"link-local block", allow("169.254.0.0/16"), "egress.allow[0].cidr", "link-local"},
		{"azure", allow("168.63.129.16/32"), "egress.allow[0].cidr", "Azure"},
		{"alibaba inside allowed CGNAT", allow("100.100.100.200/32"), "egress.allow[0].cidr", "Alibaba"},
		{"private", allow("192.168.1.0/24"), "egress.allow[0].cidr", "private (RFC 1918) (192.168.0.0/16): VMs reach it only where network.allow_private lists it (it lists 10.20.0.0/16, 100.64.0.0/10)"},
		{"wider than the allowed part", allow("10.0.0.0/8"), "egress.allow[0].cidr", "10.0.0.0/8 is private"},
		{"denied inside allowed", allow("10.20.9.128/25"), "egress.allow[0].cidr", "network.deny (10.20.9.0/24)"},
		{"denied public", allow("203.0.113.7/32"), "egress.allow[0].cidr", "network.deny"},
		{"multicast", allow("239.1.2.3/32"), "egress.allow[0].cidr", "multicast"},
		{"broadcast", allow("255.255.255.255/32"), "egress.allow[0].cidr", "broadcast"},
		{"host network", allow("192.0.2.10/32"), "egress.allow[0].cidr", "the host's own network (192.0.2.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.CheckEgress(tc.p, routes)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("CheckEgress() = %v, want nil", err)
				}
				return
			}
			assertFieldError(t, err, tc.field)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	// Without the host's routes (before the rules are installed) that
	// check is left to the rules.
	if err := c.CheckEgress(allow("192.0.2.10/32"), nil); err != nil {
		t.Fatalf("without host routes: %v", err)
	}
	// Without allow_private, the refusal says so.
	err := Config{}.WithDefaults().CheckEgress(allow("10.1.0.0/16"), nil)
	if err == nil || !strings.Contains(err.Error(), "network.allow_private lists it (it lists nothing)") {
		t.Fatalf("CheckEgress() = %v", err)
	}
}

func TestAggregate(t *testing.T) {
	ps := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	got := aggregate(ps("192.0.2.0/24", "10.8.0.0/24", "10.0.0.0/8", "192.0.2.128/25", "10.8.0.0/24", "198.51.100.1/32", "198.51.100.0/31"))
	want := ps("10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/31")
	if !slices.Equal(got, want) {
		t.Fatalf("aggregate = %v, want %v", got, want)
	}
	if got := aggregate(nil); len(got) != 0 {
		t.Fatalf("aggregate(nil) = %v", got)
	}
}

// assertFieldError checks that err has a FieldError for field, whose text
// starts with the field's name, and that it is an errdefs.ErrInvalid.
func assertFieldError(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %s", field)
	}
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("error %v is not errdefs.ErrInvalid", err)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.HasPrefix(line, field+": ") {
			return
		}
	}
	t.Fatalf("error %q does not name %s", err, field)
}

func TestNormalizeSlots(t *testing.T) {
	c := Config{}.WithDefaults()
	slot := func(id, ip string) Slot {
		return Slot{VMID: id, TAP: TAPName("hth", id, 0), MAC: MACFor(id), IP: netip.MustParseAddr(ip), Egress: EgressPolicy{Mode: "open"}}
	}
	got, err := normalizeSlots(c, []Slot{slot("vm-b", "172.30.0.20"), slot("vm-a", "172.30.0.3")})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].VMID != "vm-a" || got[1].VMID != "vm-b" {
		t.Fatalf("slots not sorted by IP: %v, %v", got[0].VMID, got[1].VMID)
	}
	sameIP := slot("vm-c", "172.30.0.3")
	sameTAP := slot("vm-d", "172.30.0.4")
	sameTAP.TAP = got[0].TAP
	badMAC := slot("vm-e", "172.30.0.5")
	badMAC.MAC[0] |= 1
	for _, tc := range []struct {
		name  string
		slots []Slot
		want  string
	}{
		{"duplicate ip", []Slot{slot("vm-a", "172.30.0.3"), sameIP}, "ip 172.30.0.3 is also used"},
		{"duplicate tap", []Slot{slot("vm-a", "172.30.0.3"), sameTAP}, "is also used"},
		{"duplicate vm", []Slot{slot("vm-a", "172.30.0.3"), slot("vm-a", "172.30.0.4")}, "vm id vm-a is also used"},
		{"gateway", []Slot{slot("vm-a", "172.30.0.1")}, "is the gateway"},
		{"network address", []Slot{slot("vm-a", "172.30.0.0")}, "network address"},
		{"broadcast", []Slot{slot("vm-a", "172.30.0.255")}, "broadcast"},
		{"outside", []Slot{slot("vm-a", "10.0.0.2")}, "outside network.subnet"},
		{"multicast mac", []Slot{badMAC}, "unicast"},
		{"foreign tap", []Slot{{VMID: "vm-x", TAP: "eth0", MAC: MACFor("vm-x"), IP: netip.MustParseAddr("172.30.0.9"), Egress: EgressPolicy{Mode: "none"}}}, "must start with"},
		{"bad egress", []Slot{{VMID: "vm-x", TAP: "hthx", MAC: MACFor("vm-x"), IP: netip.MustParseAddr("172.30.0.9")}}, "egress.mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := normalizeSlots(c, tc.slots)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("normalizeSlots() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
