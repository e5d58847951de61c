package network

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file renders nftables state at the expression level, in the style of
// `nft --debug=netlink`, from either the ruleset hearth builds or what the
// kernel lists back. Comparing the two proves the kernel holds exactly what
// hearth asked for; comparing two listings proves a state was restored.

// dumpRuleset renders the ruleset hearth builds.
func dumpRuleset(rs *ruleset) string {
	var b strings.Builder
	for _, t := range rs.tables() {
		fmt.Fprintf(&b, "table %s %s\n", familyName(t.table.Family), t.table.Name)
		var elems []string
		for _, e := range t.vmMap.elems {
			elems = append(elems, dumpElem(e.key, expr.VerdictJump, e.chain))
		}
		dumpMap(&b, t.vmMap.set.Name, elems)
		for _, c := range t.chains {
			var rules []*nftables.Rule
			for _, r := range c.rules {
				rules = append(rules, r.nftRule(c.chain))
			}
			dumpChain(&b, c.chain, rules)
		}
	}
	return b.String()
}

// listRuleset reads hearth's tables back from the kernel and renders them
// like dumpRuleset. Tables that do not exist are left out. It normalizes
// what carries no meaning and depends on history: map elements are sorted
// by key, and the VMs' chains by name after the base chains (which keep
// the kernel's order, that of their creation).
func listRuleset(h *Host) (string, error) {
	c, err := h.nftConn()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, t := range hearthTables() {
		tables, err := c.ListTablesOfFamily(t.Family)
		if err != nil {
			return "", fmt.Errorf("list tables: %w", err)
		}
		if !hasTable(tables, t.Name) {
			continue
		}
		fmt.Fprintf(&b, "table %s %s\n", familyName(t.Family), t.Name)
		if err := listMaps(&b, c, t); err != nil {
			return "", err
		}
		if err := listChains(&b, c, t); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// listMaps renders t's sets and maps, by name, elements sorted.
func listMaps(b *strings.Builder, c *nftables.Conn, t *nftables.Table) error {
	sets, err := c.GetSets(t)
	if err != nil {
		return fmt.Errorf("list sets: %w", err)
	}
	slices.SortFunc(sets, func(x, y *nftables.Set) int { return strings.Compare(x.Name, y.Name) })
	for _, s := range sets {
		if !s.IsMap {
			fmt.Fprintf(b, "  set %s (not a map)\n", s.Name)
			continue
		}
		got, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("list elements of %s: %w", s.Name, err)
		}
		var elems []string
		for _, e := range got {
			kind, chain, err := decodeVerdict(e.Val)
			if err != nil {
				return fmt.Errorf("element %x of %s: %w", e.Key, s.Name, err)
			}
			elems = append(elems, dumpElem(e.Key, kind, chain))
		}
		slices.Sort(elems)
		dumpMap(b, s.Name, elems)
	}
	return nil
}

// listChains renders t's chains: the base chains in kernel order, then
// the VMs' chains by name.
func listChains(b *strings.Builder, c *nftables.Conn, t *nftables.Table) error {
	all, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	var base, vms []*nftables.Chain
	for _, ch := range all {
		switch {
		case ch.Table.Name != t.Name:
		case isVMChain(ch.Name):
			vms = append(vms, ch)
		default:
			base = append(base, ch)
		}
	}
	slices.SortFunc(vms, func(x, y *nftables.Chain) int { return strings.Compare(x.Name, y.Name) })
	for _, ch := range append(base, vms...) {
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		dumpChain(b, ch, rules)
	}
	return nil
}

// decodeVerdict decodes a verdict map element's data as the library
// returns it: the attributes nested in NFTA_DATA_VERDICT.
func decodeVerdict(b []byte) (expr.VerdictKind, string, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, "", err
	}
	ad.ByteOrder = binary.BigEndian
	var (
		kind  expr.VerdictKind
		chain string
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			kind = expr.VerdictKind(int32(ad.Uint32()))
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	return kind, chain, ad.Err()
}

func dumpMap(b *strings.Builder, name string, elems []string) {
	fmt.Fprintf(b, "  map %s\n", name)
	for _, e := range elems {
		fmt.Fprintf(b, "    %s\n", e)
	}
}

func dumpElem(key []byte, kind expr.VerdictKind, chain string) string {
	return fmt.Sprintf("[%x] : %s", key, verdictText(kind, chain))
}

func verdictText(kind expr.VerdictKind, chain string) string {
	kinds := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictGoto: "goto", expr.VerdictJump: "jump"}
	name, ok := kinds[kind]
	if !ok {
		name = fmt.Sprintf("verdict%d", kind)
	}
	return strings.TrimSpace(name + " " + chain)
}

func dumpChain(b *strings.Builder, c *nftables.Chain, rules []*nftables.Rule) {
	fmt.Fprintf(b, "  chain %s", c.Name)
	if h := chainHeader(c); h != "" {
		fmt.Fprintf(b, " (%s)", h)
	}
	b.WriteString("\n")
	for _, r := range rules {
		b.WriteString("   ")
		for _, e := range r.Exprs {
			fmt.Fprintf(b, " [%s]", dumpExpr(e))
		}
		if comment, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
			fmt.Fprintf(b, " comment %q", comment)
		}
		b.WriteString("\n")
	}
}

func dumpExpr(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Meta:
		return fmt.Sprintf("meta load %s => reg %d", metaKeyName(e.Key), e.Register)
	case *expr.Cmp:
		ops := map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}
		return fmt.Sprintf("cmp %s reg %d 0x%x", ops[e.Op], e.Register, e.Data)
	case *expr.Payload:
		bases := map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "link", expr.PayloadBaseNetworkHeader: "network", expr.PayloadBaseTransportHeader: "transport"}
		return fmt.Sprintf("payload load %db @ %s header + %d => reg %d", e.Len, bases[e.Base], e.Offset, e.DestRegister)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = (reg %d & 0x%x) ^ 0x%x", e.DestRegister, e.SourceRegister, e.Mask, e.Xor)
	case *expr.Ct:
		key := fmt.Sprintf("key%d", e.Key)
		if e.Key == expr.CtKeySTATE {
			key = "state"
		}
		return fmt.Sprintf("ct load %s => reg %d", key, e.Register)
	case *expr.Verdict:
		return "immediate " + verdictText(e.Kind, e.Chain)
	case *expr.Lookup:
		if !e.IsDestRegSet {
			return fmt.Sprintf("lookup reg %d set %s", e.SourceRegister, e.SetName)
		}
		return fmt.Sprintf("lookup reg %d set %s dreg %d", e.SourceRegister, e.SetName, e.DestRegister)
	case *expr.Fib:
		if *e == (expr.Fib{Register: e.Register, FlagDADDR: true, ResultADDRTYPE: true}) {
			return fmt.Sprintf("fib daddr type => reg %d", e.Register)
		}
		return fmt.Sprintf("fib %+v", *e)
	case *expr.Masq:
		if *e == (expr.Masq{}) {
			return "masq"
		}
		return fmt.Sprintf("masq %+v", *e)
	}
	return fmt.Sprintf("%T %+v", e, e)
}

func metaKeyName(k expr.MetaKey) string {
	names := map[expr.MetaKey]string{
		expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname",
		expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyL4PROTO: "l4proto",
	}
	if n, ok := names[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}
