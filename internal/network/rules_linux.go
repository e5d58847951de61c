package network

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// hearth's nftables layout. Everything lives in two tables that belong to
// hearth alone:
//
//   - table inet hearth: input (VM→host), forward (VM↔VM via the gateway,
//     VM→outside, outside→VM), egress (drops what the host denies every
//     VM, then dispatches a VM's packets to its own chain by source
//     address, through the verdict map vm_egress), host_routes (drops the
//     subnets routed through the host's interfaces; the only shared chain
//     whose rules change, when the host's routes do), one chain per VM
//     with its egress policy, and postrouting (masquerade). inet covers
//     IPv6 too, so a VM cannot reach the host over link-local IPv6 either.
//   - table bridge hearth: prerouting (anti-spoofing: dispatches a frame to
//     its TAP's chain through the verdict map vm_ports; a VM's chain accepts
//     ARP and IPv4 from its slot's MAC and IP, anything else falls through
//     to the final drop), one chain per VM, and forward (no frame goes from
//     one VM's TAP to another's). Bridged frames never reach the inet hooks
//     (no br_netfilter), so only this table sees VM↔VM L2 traffic.
//
// The base chains and their rules never change after Setup (host_routes
// is refreshed on its own, see RefreshHostRoutes): a VM is added
// or removed by creating or deleting its two chains and its two map
// elements, so the final drops stay last by construction and the cost per
// VM does not depend on how many others there are (and neither does a
// packet's: the maps are hash lookups, not a rule per VM).
const (
	tableName    = "hearth"
	chainInput   = "input"
	chainForward = "forward"
	chainEgress  = "egress"
	chainRoutes  = "host_routes"
	chainPost    = "postrouting"
	chainPre     = "prerouting"

	mapEgress = "vm_egress" // inet: source address → jump to the VM's chain
	mapPorts  = "vm_ports"  // bridge: input TAP → jump to the VM's chain
)

// Set ids of the maps, which name them within a batch that creates them.
const (
	mapEgressID = 1
	mapPortsID  = 2
)

// bridgeFilterPriority is nft's "filter" priority in the bridge family.
const bridgeFilterPriority = -200

// ruleset is hearth's complete nftables state, in order.
type ruleset struct {
	inet, bridge *tableSpec
}

// tables lists the ruleset's tables in the order they are applied.
func (r *ruleset) tables() []*tableSpec { return []*tableSpec{r.inet, r.bridge} }

// tableSpec is one table: its verdict map, its base chains and then the
// VMs' chains, sorted by name.
type tableSpec struct {
	table  *nftables.Table
	vmMap  *mapSpec
	chains []*chainSpec
}

type chainSpec struct {
	chain *nftables.Chain
	rules []ruleSpec
}

// mapSpec is a verdict map and its elements, sorted by key.
type mapSpec struct {
	set   *nftables.Set
	elems []elemSpec
}

// elemSpec is a verdict map element: packets whose key matches jump to
// chain.
type elemSpec struct {
	key   []byte
	text  string // the key as nft prints it
	chain string
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

// vmSpec is one VM's share of the ruleset: in each table, a chain of its
// own and the map element that sends its traffic there.
type vmSpec struct {
	egress, port vmPart
}

// vmPart is a VM's share of one table.
type vmPart struct {
	set   *nftables.Set // the table's verdict map
	elem  elemSpec
	chain *chainSpec
}

// buildRuleset returns the ruleset for c, the host's routes (aggregated)
// and slots (already normalized): the baseline plus each slot's vmSpec,
// exactly what AddSlot would add.
func buildRuleset(c Config, hostRoutes []netip.Prefix, slots []Slot) *ruleset {
	rs := &ruleset{inet: inetTable(c, hostRoutes), bridge: bridgeTable(c)}
	for _, s := range slots {
		v := buildVM(s)
		rs.inet.addVM(v.egress)
		rs.bridge.addVM(v.port)
	}
	for _, t := range rs.tables() {
		t.sortVMs()
	}
	return rs
}

// expectedChains lists hearth's tables and the base chains each must have.
func expectedChains() map[nftables.TableFamily][]string {
	return map[nftables.TableFamily][]string{
		nftables.TableFamilyINet:   {chainInput, chainForward, chainEgress, chainRoutes, chainPost},
		nftables.TableFamilyBridge: {chainPre, chainForward},
	}
}

// expectedMaps lists hearth's tables and the map each must have.
func expectedMaps() map[nftables.TableFamily]string {
	return map[nftables.TableFamily]string{
		nftables.TableFamilyINet:   mapEgress,
		nftables.TableFamilyBridge: mapPorts,
	}
}

func inetTableObj() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
}

func bridgeTableObj() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyBridge}
}

// egressMap maps a VM's source address to its egress chain.
func egressMap() *nftables.Set {
	return &nftables.Set{Table: inetTableObj(), Name: mapEgress, ID: mapEgressID, IsMap: true,
		KeyType: nftables.TypeIPAddr, KeyByteOrder: binaryutil.BigEndian, DataType: nftables.TypeVerdict}
}

// portsMap maps a VM's TAP to its anti-spoofing chain. Interface names
// are in host byte order for nft (a string type), which it needs to be
// told to print them.
func portsMap() *nftables.Set {
	return &nftables.Set{Table: bridgeTableObj(), Name: mapPorts, ID: mapPortsID, IsMap: true,
		KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
}

func inetTable(c Config, hostRoutes []netip.Prefix) *tableSpec {
	t := inetTableObj()
	br := c.Bridge
	vmMap := &mapSpec{set: egressMap()}

	// VM→host: replies, and the configured ports at the gateway's address
	// only (not at the host's other addresses, such as its uplink's).
	gw := netip.PrefixFrom(c.Gateway(), 32)
	input := baseChain(t, chainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, *nftables.ChainPriorityFilter)
	input.add(accept(iifname(br), ctEstablished()))
	for _, p := range sortedPorts(c.HostPorts) {
		input.add(accept(iifname(br), nfproto4(), ipDaddr(gw), l4proto(p.Protocol), thDport(p.Port)))
	}
	input.add(drop(iifname(br)))

	forward := baseChain(t, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, *nftables.ChainPriorityFilter)
	forward.add(drop(iifname(br), oifname(br)))       // VM→VM routed through the gateway
	forward.add(accept(oifname(br), ctEstablished())) // replies to VMs' connections
	forward.add(drop(oifname(br)))                    // nothing else enters the VM network
	forward.add(gotoChain(chainEgress, iifname(br)))  // VM→outside: per-VM policy

	// VM→outside, in order: what no VM reaches whatever anyone says
	// (link-local: a cloud's metadata service hands out the host's
	// credentials); what the operator denies; the host's own addresses
	// (matched by the kernel, so they follow DHCP); then the operator's
	// private exceptions go to the VM's policy ahead of the default deny
	// of private ranges and of the host's routed subnets; then every
	// other destination goes to the VM's policy.
	egress := &chainSpec{chain: &nftables.Chain{Name: chainEgress, Table: t}}
	for _, r := range neverRanges {
		egress.add(commented(drop(nfproto4(), ipDaddr(r.prefix)), r.what))
	}
	for _, p := range aggregate(c.Deny) {
		egress.add(commented(drop(nfproto4(), ipDaddr(p)), "network.deny"))
	}
	egress.add(commented(drop(fibDaddrTypeLocal()), "the host's addresses"))
	for _, p := range aggregate(c.AllowPrivate) {
		egress.add(commented(dispatch(nfproto4(), ipDaddr(p), vmapLookup("ip saddr", payload(expr.PayloadBaseNetworkHeader, 12, 4), vmMap.set)), "network.allow_private"))
	}
	for _, r := range privateRanges {
		egress.add(commented(drop(nfproto4(), ipDaddr(r.prefix)), r.what))
	}
	egress.add(jumpChain(chainRoutes))
	egress.add(dispatch(nfproto4(), vmapLookup("ip saddr", payload(expr.PayloadBaseNetworkHeader, 12, 4), vmMap.set)))
	egress.add(drop()) // addresses in no slot (or whose chain returns), and IPv6

	post := baseChain(t, chainPost, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, *nftables.ChainPriorityNATSource)
	post.add(masquerade(nfproto4(), ipSaddr(c.Subnet), oifnameNot(br)))

	return &tableSpec{table: t, vmMap: vmMap, chains: []*chainSpec{input, forward, egress, hostRoutesChain(hostRoutes), post}}
}

// hostRoutesChain drops the subnets routed through the host's interfaces
// (the operator's networks: its LAN, a VPN's, a container bridge's),
// aggregated; it returns for anything else.
func hostRoutesChain(routes []netip.Prefix) *chainSpec {
	c := &chainSpec{chain: &nftables.Chain{Name: chainRoutes, Table: inetTableObj()}}
	for _, p := range routes {
		c.add(drop(nfproto4(), ipDaddr(p)))
	}
	return c
}

func bridgeTable(c Config) *tableSpec {
	t := bridgeTableObj()
	taps := iifnamePrefix(c.TAPPrefix)
	vmMap := &mapSpec{set: portsMap()}

	pre := baseChain(t, chainPre, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, bridgeFilterPriority)
	pre.add(dispatch(vmapLookup("iifname", meta(expr.MetaKeyIIFNAME), vmMap.set)))
	pre.add(drop(taps)) // unknown TAPs, and anything a VM's chain did not accept

	forward := baseChain(t, chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, bridgeFilterPriority)
	forward.add(drop(taps, oifnamePrefix(c.TAPPrefix)))

	return &tableSpec{table: t, vmMap: vmMap, chains: []*chainSpec{pre, forward}}
}

// addVM adds a VM's chain and map element to the table.
func (t *tableSpec) addVM(p vmPart) {
	t.chains = append(t.chains, p.chain)
	t.vmMap.elems = append(t.vmMap.elems, p.elem)
}

// sortVMs orders the VMs' chains by name and the map's elements by key,
// so that equal rulesets render alike whatever order the slots came in.
// The base chains come first and keep their order.
func (t *tableSpec) sortVMs() {
	slices.SortStableFunc(t.chains, func(a, b *chainSpec) int {
		av, bv := isVMChain(a.chain.Name), isVMChain(b.chain.Name)
		switch {
		case av && bv:
			return strings.Compare(a.chain.Name, b.chain.Name)
		case av:
			return 1
		case bv:
			return -1
		}
		return 0
	})
	slices.SortFunc(t.vmMap.elems, func(a, b elemSpec) int { return bytes.Compare(a.key, b.key) })
}

// buildVM returns a slot's (already validated) chains, rules and map
// elements.
func buildVM(s Slot) vmSpec {
	v := vmParts(s.VMID, s.IP, s.TAP)
	v.egress.chain.add(egressRules(s)...)
	v.port.chain.add(antiSpoofRules(s)...)
	return v
}

// vmParts returns a VM's chains, still empty, and its map elements for
// address ip and TAP tap.
func vmParts(vmID string, ip netip.Addr, tap string) vmSpec {
	name := vmChainName(vmID)
	return vmSpec{
		egress: vmPart{set: egressMap(), elem: egressElem(ip, name),
			chain: &chainSpec{chain: &nftables.Chain{Name: name, Table: inetTableObj()}}},
		port: vmPart{set: portsMap(), elem: portElem(tap, name),
			chain: &chainSpec{chain: &nftables.Chain{Name: name, Table: bridgeTableObj()}}},
	}
}

// egressElem sends packets from ip to chain.
func egressElem(ip netip.Addr, chain string) elemSpec {
	a := ip.As4()
	return elemSpec{key: a[:], text: ip.String(), chain: chain}
}

// portElem sends frames that enter on tap to chain.
func portElem(tap, chain string) elemSpec {
	return elemSpec{key: ifnameData(tap), text: strconv.Quote(tap), chain: chain}
}

// egressRules expresses one VM's egress policy. The chain is only reached
// for IPv4 packets from the VM's address (which the bridge table
// guarantees it cannot spoof), so the rules need not match it again; each
// policy ends in a verdict.
func egressRules(s Slot) []ruleSpec {
	var rules []ruleSpec
	switch s.Egress.Mode {
	case EgressOpen:
		rules = append(rules, accept())
	case EgressAllowlist:
		for _, a := range s.Egress.Allow {
			ms := []match{nfproto4(), ipDaddr(a.CIDR)}
			if a.Protocol != "" {
				ms = append(ms, l4proto(a.Protocol))
			}
			if a.Port != 0 {
				ms = append(ms, thDport(a.Port))
			}
			rules = append(rules, accept(ms...))
		}
		rules = append(rules, drop())
	default: // EgressNone
		rules = append(rules, drop())
	}
	for i := range rules {
		rules[i].comment = s.VMID
	}
	return rules
}

// antiSpoofRules accept what a VM's TAP may send: IPv4 from its address and
// ARP for its address (or 0.0.0.0, an ARP probe), all from its MAC. The
// first rule also records the VM's map keys (TAP and address), which is
// how AddSlot and RemoveSlot find them (see installedVM).
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

func jumpChain(chain string, ms ...match) ruleSpec {
	return finish(ms, "jump "+chain, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain})
}

// commented gives r a comment, which nft lists with it.
func commented(r ruleSpec, comment string) ruleSpec {
	r.comment = comment
	return r
}

func masquerade(ms ...match) ruleSpec {
	return finish(ms, "masquerade", &expr.Masq{})
}

// dispatch is a rule whose last match is a verdict map lookup, which
// gives the verdict.
func dispatch(ms ...match) ruleSpec { return finish(ms, "", nil) }

// finish joins matches into a rule ending in verdict v (none if nil).
func finish(ms []match, verdict string, v expr.Any) ruleSpec {
	var r ruleSpec
	words := make([]string, 0, len(ms)+1)
	for _, m := range ms {
		words = append(words, m.text)
		r.exprs = append(r.exprs, m.exprs...)
	}
	if v != nil {
		words = append(words, verdict)
		r.exprs = append(r.exprs, v)
	}
	r.text = strings.Join(words, " ")
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

// fibDaddrTypeLocal matches packets to one of the host's own addresses,
// as the kernel's routing tables say at that moment.
func fibDaddrTypeLocal() match {
	return match{"fib daddr type local", []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}}
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

// vmapLookup loads a key into register 1 and looks it up in the verdict
// map m ("<key> vmap @m"): a matching element's verdict applies; no match
// means the rule does not match.
func vmapLookup(key string, load expr.Any, m *nftables.Set) match {
	return match{key + " vmap @" + m.Name, []expr.Any{load,
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, DestRegister: 0, SetName: m.Name, SetID: m.ID}}}
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
	for _, t := range r.tables() {
		fmt.Fprintf(&b, "table %s %s {\n", familyName(t.table.Family), t.table.Name)
		writeMap(&b, t.vmMap)
		for _, c := range t.chains {
			b.WriteString("\n")
			writeChain(&b, c)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// writeMap renders a verdict map, one element a line.
func writeMap(b *strings.Builder, m *mapSpec) {
	fmt.Fprintf(b, "\tmap %s {\n\t\ttype %s : verdict\n", m.set.Name, m.set.KeyType.Name)
	if len(m.elems) > 0 {
		b.WriteString("\t\telements = {\n")
		for _, e := range m.elems {
			fmt.Fprintf(b, "\t\t\t%s : jump %s,\n", e.text, e.chain)
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n")
}

func writeChain(b *strings.Builder, c *chainSpec) {
	fmt.Fprintf(b, "\tchain %s {\n", c.chain.Name)
	if h := chainHeader(c.chain); h != "" {
		fmt.Fprintf(b, "\t\t%s\n", h)
	}
	for _, rule := range c.rules {
		b.WriteString("\t\t" + rule.text)
		if rule.comment != "" {
			fmt.Fprintf(b, " comment %q", rule.comment)
		}
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
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
