package vm

import (
	"fmt"
	"net/netip"
	"strings"
)

// The host's configured egress policy (Networker.DefaultEgress) is the
// ceiling of what a user key may ask for; admin keys may ask for more.
// Policies are ordered none < allow-list < open, and one allow-list is
// within another when each of its rules is within one of the other's: a
// CIDR inside the other's, the same protocol or the other's "any", the
// same port or the other's "any".

// Within returns nil if e asks for no more than ceiling allows, and
// otherwise an error that says what is wider and what the ceiling is.
// Both must be valid (Networker.ValidateEgress).
func (e Egress) Within(ceiling Egress) error {
	switch {
	case e.Mode == "none" || ceiling.Mode == "open":
		return nil
	case e.Mode == "open" || ceiling.Mode == "none":
		return fmt.Errorf("mode %q is wider than this host's egress policy (%s)", e.Mode, ceiling.describe())
	}
	for i, r := range e.Allow {
		if !r.withinAny(ceiling.Allow) {
			return fmt.Errorf("allow[%d] (%s) is wider than this host's egress policy (%s)", i, r, ceiling.describe())
		}
	}
	return nil
}

// describe names the policy as the configuration does.
func (e Egress) describe() string {
	if e.Mode != "allowlist" {
		return fmt.Sprintf("network.default_egress = %q", e.Mode)
	}
	rules := make([]string, len(e.Allow))
	for i, r := range e.Allow {
		rules[i] = r.String()
	}
	return fmt.Sprintf("network.default_egress = \"allowlist\" of %s", strings.Join(rules, ", "))
}

// String renders the rule as "tcp 203.0.113.0/24 port 443".
func (r EgressRule) String() string {
	proto, port := r.Protocol, "any port"
	if proto == "" {
		proto = "any protocol"
	}
	if r.Port != 0 {
		port = fmt.Sprintf("port %d", r.Port)
	}
	return fmt.Sprintf("%s %s %s", proto, r.CIDR, port)
}

func (r EgressRule) withinAny(outers []EgressRule) bool {
	for _, o := range outers {
		if r.within(o) {
			return true
		}
	}
	return false
}

// within reports whether every connection r allows, o allows too.
func (r EgressRule) within(o EgressRule) bool {
	p, okp := parseCIDR(r.CIDR)
	q, okq := parseCIDR(o.CIDR)
	return okp && okq && p.Bits() >= q.Bits() && q.Contains(p.Addr()) &&
		(o.Protocol == "" || o.Protocol == r.Protocol) &&
		(o.Port == 0 || o.Port == r.Port)
}

// parseCIDR reads a rule's CIDR, which may be a bare address.
func parseCIDR(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}
