package network

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Egress modes.
const (
	// EgressOpen lets a VM reach anything outside its subnet that the host
	// does not deny (see Destinations), masqueraded behind the host's
	// address.
	EgressOpen = "open"
	// EgressNone lets a VM reach nothing outside its subnet.
	EgressNone = "none"
	// EgressAllowlist lets a VM reach only what its AllowRules list, and of
	// that only what the host does not deny.
	EgressAllowlist = "allowlist"
)

// EgressPolicy says where a VM may open connections outside its subnet.
// Replies to connections the host opened to the VM are always allowed.
// Whatever the policy, the host's denies come first (see
// Config.CheckEgress and the egress chain).
type EgressPolicy struct {
	Mode  string      // EgressOpen, EgressNone or EgressAllowlist
	Allow []AllowRule // only with EgressAllowlist; at least one
}

// AllowRule allows one destination in allowlist mode.
type AllowRule struct {
	CIDR     netip.Prefix // IPv4 destination network
	Protocol string       // "" (any), "tcp" or "udp"
	Port     uint16       // 0 = any; needs Protocol
}

// reserved is a range of destinations the host denies, and what it is.
type reserved struct {
	prefix netip.Prefix
	what   string
}

func reservedRange(cidr, what string) reserved {
	return reserved{netip.MustParsePrefix(cidr), what}
}

// linkLocal4 is IPv4's link-local block (RFC 3927): the host's business
// (a cloud's metadata service lives at 169.254.169.254), never a VM's.
var linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")

// neverRanges are destinations no VM reaches, whatever its policy and
// whatever the operator allows: they hand out the host's own credentials
// or configuration. (Were IPv6 ever forwarded, fe80::/10 and AWS's
// fd00:ec2::254 would belong here; today every IPv6 packet from a VM is
// dropped.)
var neverRanges = []reserved{
	{linkLocal4, "link-local"}, // AWS, GCP, OpenStack, Oracle…: 169.254.169.254
	reservedRange("168.63.129.16/32", "Azure's host endpoint (wireserver)"),
	reservedRange("100.100.100.200/32", "Alibaba Cloud's metadata service"),
}

// privateRanges are destinations no VM reaches unless the operator allows
// them (Config.AllowPrivate): the operator's networks, and addresses that
// are not one host on the internet.
var privateRanges = []reserved{
	reservedRange("0.0.0.0/8", "this network (RFC 791)"),
	reservedRange("10.0.0.0/8", "private (RFC 1918)"),
	reservedRange("100.64.0.0/10", "shared address space (carrier-grade NAT, RFC 6598)"),
	reservedRange("127.0.0.0/8", "loopback"),
	reservedRange("172.16.0.0/12", "private (RFC 1918)"),
	reservedRange("192.168.0.0/16", "private (RFC 1918)"),
	reservedRange("224.0.0.0/4", "multicast"),
	reservedRange("240.0.0.0/4", "reserved (with the broadcast address 255.255.255.255)"),
}

// within reports whether p lies entirely inside outer.
func within(p, outer netip.Prefix) bool {
	return p.Bits() >= outer.Bits() && outer.Contains(p.Addr())
}

// withinAny returns the first of outers that contains p entirely.
func withinAny(p netip.Prefix, outers []netip.Prefix) (netip.Prefix, bool) {
	for _, o := range outers {
		if within(p, o) {
			return o, true
		}
	}
	return netip.Prefix{}, false
}

// Validate checks that the policy is well formed; each error names its
// field ("egress.allow[1].port: ..."). Whether this host lets a VM reach
// the destinations is Config.CheckEgress's to say.
func (p EgressPolicy) Validate() error {
	var errs fieldErrors
	p.validate(&errs)
	return errs.err()
}

func (p EgressPolicy) validate(errs *fieldErrors) {
	switch p.Mode {
	case EgressOpen, EgressNone:
		if len(p.Allow) > 0 {
			errs.add("egress.allow", "only allowed with mode %q, got mode %q", EgressAllowlist, p.Mode)
		}
	case EgressAllowlist:
		if len(p.Allow) == 0 {
			errs.add("egress.allow", "mode %q needs at least one rule (use mode %q to allow nothing)", EgressAllowlist, EgressNone)
		}
	default:
		errs.add("egress.mode", "must be %s, %s or %s, got %q", EgressOpen, EgressNone, EgressAllowlist, p.Mode)
	}
	for i, r := range p.Allow {
		r.validate(fmt.Sprintf("egress.allow[%d]", i), errs)
	}
}

func (r AllowRule) validate(field string, errs *fieldErrors) {
	switch c := r.CIDR; {
	case !c.IsValid():
		errs.add(field+".cidr", "must be an IPv4 prefix such as 198.51.100.0/24")
	case !c.Addr().Is4():
		errs.add(field+".cidr", "must be IPv4, got %s", c)
	case c != c.Masked():
		errs.add(field+".cidr", "%s has host bits set (did you mean %s?)", c, c.Masked())
	}
	switch r.Protocol {
	case "", "tcp", "udp":
	default:
		errs.add(field+".protocol", "must be empty (any), tcp or udp, got %q", r.Protocol)
	}
	if r.Port != 0 && r.Protocol == "" {
		errs.add(field+".port", "port %d needs a protocol (tcp or udp)", r.Port)
	}
}

// CheckEgress checks a policy a VM asks for on this host: well formed
// (Validate), and no allow rule that could never work because every
// destination it names is denied. hostRoutes are the subnets routed
// through the host's interfaces (Host.HostRoutes); nil skips that check.
//
// A rule is refused when its CIDR lies inside one denied range: a range
// no VM ever reaches (link-local, cloud metadata services), one in
// network.deny, or a private range or host route that network.allow_private
// does not lift (in full). A rule that merely overlaps denied ranges (such
// as 0.0.0.0/0 on port 443) is accepted; the denied part stays denied.
func (c Config) CheckEgress(p EgressPolicy, hostRoutes []netip.Prefix) error {
	var errs fieldErrors
	p.validate(&errs)
	if len(errs) > 0 {
		return errs.err()
	}
	for i, r := range p.Allow {
		if why := c.denied(r.CIDR, hostRoutes); why != "" {
			errs.add(fmt.Sprintf("egress.allow[%d].cidr", i), "%s", why)
		}
	}
	return errs.err()
}

// denied says why no VM on this host can reach any address of dst, or ""
// if some VM may reach some of it.
func (c Config) denied(dst netip.Prefix, hostRoutes []netip.Prefix) string {
	for _, r := range neverRanges {
		if within(dst, r.prefix) {
			return fmt.Sprintf("%s is %s (%s): no VM may reach it, whatever its policy", dst, r.what, r.prefix)
		}
	}
	if d, ok := withinAny(dst, c.Deny); ok {
		return fmt.Sprintf("%s is denied by network.deny (%s): no VM may reach it", dst, d)
	}
	if _, ok := withinAny(dst, c.AllowPrivate); ok {
		return ""
	}
	for _, r := range privateRanges {
		if within(dst, r.prefix) {
			return fmt.Sprintf("%s is %s (%s): VMs reach it only where network.allow_private lists it%s",
				dst, r.what, r.prefix, c.allowedNote())
		}
	}
	if route, ok := withinAny(dst, hostRoutes); ok {
		return fmt.Sprintf("%s is on the host's own network (%s is routed through one of its interfaces): VMs reach it only where network.allow_private lists it%s",
			dst, route, c.allowedNote())
	}
	return ""
}

// allowedNote lists network.allow_private for a refusal.
func (c Config) allowedNote() string {
	if len(c.AllowPrivate) == 0 {
		return " (it lists nothing)"
	}
	s := make([]string, len(c.AllowPrivate))
	for i, p := range c.AllowPrivate {
		s[i] = p.String()
	}
	return " (it lists " + strings.Join(s, ", ") + ")"
}

// validateDestinations checks network.deny and network.allow_private.
func (c Config) validateDestinations(errs *fieldErrors) {
	check := func(field string, p netip.Prefix) bool {
		switch {
		case !p.IsValid() || !p.Addr().Is4():
			errs.add(field, "must be an IPv4 prefix such as 10.20.0.0/16, got %s", p)
		case p != p.Masked():
			errs.add(field, "%s has host bits set (did you mean %s?)", p, p.Masked())
		default:
			return true
		}
		return false
	}
	for i, p := range c.Deny {
		check(fmt.Sprintf("network.deny[%d]", i), p)
	}
	for i, p := range c.AllowPrivate {
		field := fmt.Sprintf("network.allow_private[%d]", i)
		if !check(field, p) {
			continue
		}
		for _, r := range neverRanges {
			if within(p, r.prefix) {
				errs.add(field, "%s is %s (%s), which no VM may reach: network.allow_private cannot lift that", p, r.what, r.prefix)
			}
		}
	}
}

// aggregate returns the prefixes without those that others contain,
// sorted; equal sets of prefixes give equal results.
func aggregate(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	// Wider first at equal addresses, so a contained prefix follows
	// the one that contains it.
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	kept := out[:0]
	for _, p := range out {
		if n := len(kept); n > 0 && within(p, kept[n-1]) {
			continue
		}
		kept = append(kept, p)
	}
	return kept
}
