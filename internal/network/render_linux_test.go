package network

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// This file renders nftables state at the expression level, in the style of
// `nft --debug=netlink`, from either the ruleset hearth builds or what the
// kernel lists back. Comparing the two proves the kernel holds exactly what
// hearth asked for; comparing two listings proves a state was restored.

// dumpRuleset renders the ruleset hearth builds.
func dumpRuleset(rs *ruleset) string {
	var b strings.Builder
	for _, t := range rs.tables {
		fmt.Fprintf(&b, "table %s %s\n", familyName(t.table.Family), t.table.Name)
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
// like dumpRuleset. Tables that do not exist are left out.
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
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return "", fmt.Errorf("list chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return "", fmt.Errorf("list rules of %s: %w", ch.Name, err)
			}
			dumpChain(&b, ch, rules)
		}
	}
	return b.String(), nil
}

func hasTable(tables []*nftables.Table, name string) bool {
	for _, t := range tables {
		if t.Name == name {
			return true
		}
	}
	return false
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
		kinds := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictGoto: "goto", expr.VerdictJump: "jump"}
		return strings.TrimSpace("immediate " + kinds[e.Kind] + " " + e.Chain)
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
