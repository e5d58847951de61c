package network

import (
	"fmt"
	"net/netip"
)

// Egress modes.
const (
	// EgressOpen lets a VM reach anything outside its subnet, masqueraded
	// behind the host's address.
	EgressOpen = "open"
	// EgressNone lets a VM reach nothing outside its subnet.
	EgressNone = "none"
	// EgressAllowlist lets a VM reach only what its AllowRules list.
	EgressAllowlist = "allowlist"
)

// EgressPolicy says where a VM may open connections outside its subnet.
// Replies to connections the host opened to the VM are always allowed.
type EgressPolicy struct {
	Mode  string      // EgressOpen, EgressNone or EgressAllowlist
	Allow []AllowRule // only with EgressAllowlist; at least one
}

// linkLocal4 is IPv4's link-local block (RFC 3927): the host's business
// (a cloud's metadata service lives at 169.254.169.254), never a VM's.
var linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")

// AllowRule allows one destination in allowlist mode.
type AllowRule struct {
	CIDR     netip.Prefix // IPv4 destination network
	Protocol string       // "" (any), "tcp" or "udp"
	Port     uint16       // 0 = any; needs Protocol
}

// Validate checks the policy; each error names its field ("egress.allow[1].port: ...").
func (p EgressPolicy) Validate() error {
	var errs fieldErrors
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
		r.validate(fmt.Sprintf("egress.allow[%d]", i), &errs)
	}
	return errs.err()
}

func (r AllowRule) validate(field string, errs *fieldErrors) {
	switch c := r.CIDR; {
	case !c.IsValid():
		errs.add(field+".cidr", "must be an IPv4 prefix such as 198.51.100.0/24")
	case !c.Addr().Is4():
		errs.add(field+".cidr", "must be IPv4, got %s", c)
	case c != c.Masked():
		errs.add(field+".cidr", "%s has host bits set (did you mean %s?)", c, c.Masked())
	case c.Bits() >= linkLocal4.Bits() && linkLocal4.Contains(c.Addr()):
		errs.add(field+".cidr", "%s is link-local (%s): no VM may reach it, whatever its policy", c, linkLocal4)
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
