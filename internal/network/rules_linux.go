package network

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// hearth's nftables layout. Everything lives in two tables that belong to
// hearth alone and are replaced as a whole:
//
//   - table inet hearth: input (VM→host), forward (VM↔VM via the gateway,
//     VM→outside, outside→VM), egress (the per-VM policy, by source address)
//     and postrouting (masquerade). inet covers IPv6 too, so a VM cannot
//     reach the host over link-local IPv6 either.
//   - table bridge hearth: prerouting (anti-spoofing: a TAP may only send
//     ARP and IPv4 from its slot's MAC and IP) and forward (no frame goes
//     from one VM's TAP to another's). Bridged frames never reach the inet
//     hooks (no br_netfilter), so only this table sees VM↔VM L2 traffic.
const (
	tableName    = "hearth"
	chainInput   = "input"
	chainForward = "forward"
	chainEgress  = "egress"
	chainPost    = "postrouting"
	chainPre     = "prerouting"
)

// bridgeFilterPriority is nft's "filter" priority in the bridge family.
const bridgeFilterPriority = -200

// ruleset is hearth's complete nftables state, in order.
type ruleset struct {
	tables []*tableSpec
}

type tableSpec struct {
	table  *nftables.Table
	chains []*chainSpec
}

type chainSpec struct {
	chain *nftables.Chain
	rules []ruleSpec
}

// ruleSpec is one rule: its expressions and an nft-like text for humans.
type ruleSpec struct {
	text    string
	exprs   []expr.Any
	comment string
}

// match is one condition of a rule.
type match struct {
	text  string
	exprs []expr.Any
}

// buildRuleset returns the ruleset for c and slots (already normalized).
func buildRuleset(c Config, slots []Slot) *ruleset {
	return &ruleset{tables: []*tableSpec{inetTable(c, slots), bridgeTable(c, slots)}}
}

// expectedChains lists hearth's tables and the chains each must have.
func expectedChains() map[nftables.TableFamily][]string {
	return map[nftables.TableFamily][]string{
		nftables.TableFamilyINet:   {chainInput, chainForward, chainEgress, chainPost},
		nftables.TableFamilyBridge: {chainPre, chainForward},
	}
}

func inetTable(c Config, slots []Slot) *tableSpec {
	t := &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
	br := c.Bridge

	input := baseChain(t, chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, *nftables.ChainPriorityFilter)
	input.add(accept(iifname(br), ctEstablished()))
	for _, p := range sortedPorts(c.HostPorts) {
		input.add(accept(iifname(br), l4proto(p.Protocol), thDport(p.Port)))
	}
	input.add(drop(iifname(br)))

	forward := baseChain(t, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, *nftables.ChainPriorityFilter)
	forward.add(drop(iifname(br), oifname(br)))       // VM→VM routed through the gateway
	forward.add(accept(oifname(br), ctEstablished())) // replies to VMs' connections
	forward.add(drop(oifname(br)))                    // nothing else enters the VM network
	forward.add(gotoChain(chainEgress, iifname(br)))  // VM→outside: per-VM policy

	egress := &chainSpec{chain: &nftables.Chain{Name: chainEgress, Table: t}}
	for _, s := range slots {
		egress.add(egressRules(s)...)
	}
	egress.add(drop()) // addresses in no slot, and IPv6

	post := baseChain(t, chainPost, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, *nftables.ChainPriorityNATSource)
	post.add(masquerade(nfproto4(), ipSaddr(c.Subnet), oifnameNot(br)))

	return &tableSpec{table: t, chains: []*chainSpec{input, forward, egress, post}}
}

// egressRules expresses one VM's egress policy, matched by its source
// address (which the bridge table guarantees it cannot spoof).
func egressRules(s Slot) []ruleSpec {
	src := ipSaddr(netip.PrefixFrom(s.IP, 32))
	var rules []ruleSpec
	switch s.Egress.Mode {
	case EgressOpen:
		rules = append(rules, accept(nfproto4(), src))
	case EgressAllowlist:
		for _, a := range s.Egress.Allow {
			ms := []match{nfproto4(), src, ipDaddr(a.CIDR)}
			if a.Protocol != "" {
				ms = append(ms, l4proto(a.Protocol))
			}
			if a.Port != 0 {
				ms = append(ms, thDport(a.Port))
			}
			rules = append(rules, accept(ms...))
		}
		rules = append(rules, drop(nfproto4(), src))
	default: // EgressNone
		rules = append(rules, drop(nfproto4(), src))
	}
	for i := range rules {
		rules[i].comment = s.VMID
	}
	return rules
}

func bridgeTable(c Config, slots []Slot) *tableSpec {
	t := &nftables.Table{Name: tableName, Family: nftables.TableFamilyBridge}
	taps := iifnamePrefix(c.TAPPrefix)

	pre := baseChain(t, chainPre, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, bridgeFilterPriority)
	for _, s := range slots {
		pre.add(antiSpoofRules(s)...)
	}
	pre.add(drop(taps)) // unknown TAPs, and anything but ARP/IPv4 from known ones

	forward := baseChain(t, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, bridgeFilterPriority)
	forward.add(drop(taps, oifnamePrefix(c.TAPPrefix)))

	return &tableSpec{table: t, chains: []*chainSpec{pre, forward}}
}

// antiSpoofRules accept what a VM's TAP may send: IPv4 from its address and
// ARP for its address (or 0.0.0.0, an ARP probe), all from its MAC.
func antiSpoofRules(s Slot) []ruleSpec {
	tap, mac := iifname(s.TAP), etherSaddr(s.MAC)
	rules := []ruleSpec{
		accept(tap, mac, etherType(unix.ETH_P_IP, "ip"), ipSaddr(netip.PrefixFrom(s.IP, 32))),
		accept(tap, mac, etherType(unix.ETH_P_ARP, "arp"), arpSha(s.MAC), arpSpa(s.IP)),
		accept(tap, mac, etherType(unix.ETH_P_ARP, "arp"), arpSha(s.MAC), arpSpa(netip.IPv4Unspecified())),
	}
	for i := range rules {
		rules[i].comment = s.VMID
	}
	return rules
}

func sortedPorts(ports []PortRule) []PortRule {
	out := slices.Clone(ports)
	slices.SortFunc(out, func(a, b PortRule) int {
		if a.Protocol != b.Protocol {
			return strings.Compare(a.Protocol, b.Protocol)
		}
		return int(a.Port) - int(b.Port)
	})
	return slices.Compact(out)
}

func baseChain(t *nftables.Table, name string, typ nftables.ChainType, hook *nftables.ChainHook, prio nftables.ChainPriority) *chainSpec {
	policy := nftables.ChainPolicyAccept
	return &chainSpec{chain: &nftables.Chain{
		Name: name, Table: t, Type: typ, Hooknum: hook,
		Priority: nftables.ChainPriorityRef(prio), Policy: &policy,
	}}
}

func (c *chainSpec) add(rules ...ruleSpec) { c.rules = append(c.rules, rules...) }

// nftRule is the library's form of r in chain c.
func (r ruleSpec) nftRule(c *nftables.Chain) *nftables.Rule {
	rule := &nftables.Rule{Table: c.Table, Chain: c, Exprs: r.exprs}
	if r.comment != "" {
		rule.UserData = userdata.AppendString(nil, userdata.TypeComment, r.comment)
	}
	return rule
}

// Verdicts.

func accept(ms ...match) ruleSpec {
	return finish(ms, "accept", &expr.Verdict{Kind: expr.VerdictAccept})
}

func drop(ms ...match) ruleSpec {
	return finish(ms, "drop", &expr.Verdict{Kind: expr.VerdictDrop})
}

func gotoChain(chain string, ms ...match) ruleSpec {
	return finish(ms, "goto "+chain, &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain})
}

func masquerade(ms ...match) ruleSpec {
	return finish(ms, "masquerade", &expr.Masq{})
}

func finish(ms []match, verdict string, v expr.Any) ruleSpec {
	var r ruleSpec
	words := make([]string, 0, len(ms)+1)
	for _, m := range ms {
		words = append(words, m.text)
		r.exprs = append(r.exprs, m.exprs...)
	}
	r.text = strings.Join(append(words, verdict), " ")
	r.exprs = append(r.exprs, v)
	return r
}

// Matches. Every match loads into register 1 and compares it.

func load(e expr.Any, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{e, &expr.Cmp{Op: op, Register: 1, Data: data}}
}

func meta(key expr.MetaKey) *expr.Meta { return &expr.Meta{Key: key, Register: 1} }

func payload(base expr.PayloadBase, offset, length uint32) *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: length}
}

// ifnameData is an exact interface name as nft compares it: NUL-padded to
// IFNAMSIZ.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iifname(name string) match {
	return match{fmt.Sprintf("iifname %q", name), load(meta(expr.MetaKeyIIFNAME), expr.CmpOpEq, ifnameData(name))}
}

func oifname(name string) match {
	return match{fmt.Sprintf("oifname %q", name), load(meta(expr.MetaKeyOIFNAME), expr.CmpOpEq, ifnameData(name))}
}

func oifnameNot(name string) match {
	return match{fmt.Sprintf("oifname != %q", name), load(meta(expr.MetaKeyOIFNAME), expr.CmpOpNeq, ifnameData(name))}
}

// iifnamePrefix matches names starting with prefix (nft's "prefix*"): only
// the prefix's bytes are compared.
func iifnamePrefix(prefix string) match {
	return match{fmt.Sprintf("iifname %q", prefix+"*"), load(meta(expr.MetaKeyIIFNAME), expr.CmpOpEq, []byte(prefix))}
}

func oifnamePrefix(prefix string) match {
	return match{fmt.Sprintf("oifname %q", prefix+"*"), load(meta(expr.MetaKeyOIFNAME), expr.CmpOpEq, []byte(prefix))}
}

// nfproto4 restricts an inet rule to IPv4 (nft adds it implicitly before
// any "ip ..." match in an inet table).
func nfproto4() match {
	return match{"meta nfproto ipv4", load(meta(expr.MetaKeyNFPROTO), expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})}
}

func l4proto(proto string) match {
	num := byte(unix.IPPROTO_TCP)
	if proto == "udp" {
		num = unix.IPPROTO_UDP
	}
	return match{"meta l4proto " + proto, load(meta(expr.MetaKeyL4PROTO), expr.CmpOpEq, []byte{num})}
}

func thDport(port uint16) match {
	return match{fmt.Sprintf("th dport %d", port),
		load(payload(expr.PayloadBaseTransportHeader, 2, 2), expr.CmpOpEq, binary.BigEndian.AppendUint16(nil, port))}
}

func ctEstablished() match {
	mask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return match{"ct state established,related", []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}}
}

func ipSaddr(p netip.Prefix) match { return ipMatch("ip saddr", 12, p) }
func ipDaddr(p netip.Prefix) match { return ipMatch("ip daddr", 16, p) }

// ipMatch compares the IPv4 header field at offset with prefix p.
func ipMatch(name string, offset uint32, p netip.Prefix) match {
	p = p.Masked()
	text := name + " " + p.String()
	if p.IsSingleIP() {
		text = name + " " + p.Addr().String()
	}
	exprs := []expr.Any{payload(expr.PayloadBaseNetworkHeader, offset, 4)}
	if !p.IsSingleIP() {
		mask := net.CIDRMask(p.Bits(), 32)
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
	}
	addr := p.Addr().As4()
	exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]})
	return match{text, exprs}
}

func etherType(ethType uint16, name string) match {
	return match{"ether type " + name,
		load(payload(expr.PayloadBaseLLHeader, 12, 2), expr.CmpOpEq, binary.BigEndian.AppendUint16(nil, ethType))}
}

func etherSaddr(mac net.HardwareAddr) match {
	return match{"ether saddr " + mac.String(), load(payload(expr.PayloadBaseLLHeader, 6, 6), expr.CmpOpEq, []byte(mac))}
}

// arpSha matches the ARP sender hardware address (Ethernet/IPv4 ARP).
func arpSha(mac net.HardwareAddr) match {
	return match{"arp saddr ether " + mac.String(), load(payload(expr.PayloadBaseNetworkHeader, 8, 6), expr.CmpOpEq, []byte(mac))}
}

// arpSpa matches the ARP sender protocol address (Ethernet/IPv4 ARP).
func arpSpa(ip netip.Addr) match {
	a := ip.As4()
	return match{"arp saddr ip " + ip.String(), load(payload(expr.PayloadBaseNetworkHeader, 14, 4), expr.CmpOpEq, a[:])}
}

// String renders the ruleset in nft's list syntax, for golden files and
// debugging. It describes what hearth asks for; the kernel's view of the
// same rules is read back by the tests.
func (r *ruleset) String() string {
	var b strings.Builder
	for _, t := range r.tables {
		fmt.Fprintf(&b, "table %s %s {\n", familyName(t.table.Family), t.table.Name)
		for i, c := range t.chains {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "\tchain %s {\n", c.chain.Name)
			if h := chainHeader(c.chain); h != "" {
				fmt.Fprintf(&b, "\t\t%s\n", h)
			}
			for _, rule := range c.rules {
				b.WriteString("\t\t" + rule.text)
				if rule.comment != "" {
					fmt.Fprintf(&b, " comment %q", rule.comment)
				}
				b.WriteString("\n")
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// chainHeader is a base chain's "type ... hook ... priority ...; policy ...;"
// line, or "" for a regular chain.
func chainHeader(c *nftables.Chain) string {
	if c.Hooknum == nil || c.Priority == nil {
		return ""
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s;",
		c.Type, hookName(*c.Hooknum), *c.Priority, policy)
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprintf("family%d", f)
}

// hookName names a hook; the inet and bridge families number them alike.
func hookName(h nftables.ChainHook) string {
	names := map[nftables.ChainHook]string{
		unix.NF_INET_PRE_ROUTING: "prerouting", unix.NF_INET_LOCAL_IN: "input",
		unix.NF_INET_FORWARD: "forward", unix.NF_INET_LOCAL_OUT: "output",
		unix.NF_INET_POST_ROUTING: "postrouting",
	}
	if n, ok := names[h]; ok {
		return n
	}
	return fmt.Sprintf("hook%d", h)
}
