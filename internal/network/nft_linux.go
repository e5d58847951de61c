package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// SyncRules makes hearth's nftables tables express exactly these slots (and
// the configured host ports), replacing both tables in one atomic nf_tables
// transaction: packets see either the old rules or the new ones, never a
// mix, and nothing outside hearth's tables is touched. Zero slots give the
// baseline ruleset. The caller passes every VM's slot; the result is the
// same as adding each slot with AddSlot to the baseline. Its cost grows
// with the number of slots, so it is meant for rebuilding everything (at
// start); AddSlot and RemoveSlot change one VM.
func (h *Host) SyncRules(ctx context.Context, slots []Slot) error {
	norm, err := normalizeSlots(h.cfg, slots)
	if err != nil {
		return fmt.Errorf("sync rules: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sync rules: %w", err)
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	if err := h.applyWithRoutes(norm); err != nil {
		return fmt.Errorf("sync rules (%d slots): %w", len(norm), err)
	}
	return nil
}

// applyWithRoutes lists the host's routes and replaces hearth's tables
// with the ruleset for them and slots; the caller holds nftMu.
func (h *Host) applyWithRoutes(slots []Slot) error {
	routes, err := h.listHostRoutes()
	if err != nil {
		return err
	}
	if err := h.apply(buildRuleset(h.cfg, routes, slots)); err != nil {
		return err
	}
	h.routes.Store(&routes)
	return nil
}

// AddSlot installs one VM's rules in one atomic nf_tables transaction that
// touches nothing but that VM's chains and map elements, so its cost does
// not depend on how many VMs there are. If the VM already has rules they
// are replaced (identical ones too). The slot's address and TAP must not
// be another VM's: the kernel refuses the transaction then, and AddSlot
// returns an errdefs.ErrConflict. (That the MAC is unique is the caller's
// to ensure, as MACFor does; checking it would mean reading every VM.)
// The tables must exist (Setup).
func (h *Host) AddSlot(ctx context.Context, s Slot) error {
	if err := s.validate(h.cfg); err != nil {
		return fmt.Errorf("add slot %q: %w", s.VMID, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("add slot %q: %w", s.VMID, err)
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	old, err := h.installedVM(s.VMID)
	if err != nil {
		return fmt.Errorf("add slot %q: %w", s.VMID, err)
	}
	var b batch
	b.putVM(buildVM(s), old)
	err = h.commit(&b)
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add slot %q: ip %s or tap %s is another vm's: %w: %w", s.VMID, s.IP, s.TAP, errdefs.ErrConflict, err)
	}
	if err != nil {
		return fmt.Errorf("add slot %q: %w", s.VMID, err)
	}
	return nil
}

// RemoveSlot deletes one VM's rules in one atomic nf_tables transaction
// that touches nothing else; afterwards its traffic meets the final drops
// like any unknown VM's. A VM without rules is fine.
func (h *Host) RemoveSlot(ctx context.Context, vmID string) error {
	if err := checkVMID(vmID); err != nil {
		return fmt.Errorf("remove slot: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove slot %q: %w", vmID, err)
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	old, err := h.installedVM(vmID)
	if err != nil {
		return fmt.Errorf("remove slot %q: %w", vmID, err)
	}
	if old == nil {
		return nil
	}
	var b batch
	b.delPart(old.egress)
	b.delPart(old.port)
	if err := h.commit(&b); err != nil {
		return fmt.Errorf("remove slot %q: %w", vmID, err)
	}
	return nil
}

// installedVM returns what vmID has installed, without rules: its chains
// and its map elements under the keys they are stored with. Those keys
// are read from the VM's bridge chain, whose rules match its TAP and
// address: one small chain, whatever the number of VMs. nil means the VM
// has no rules (a missing chain lists as empty). The caller holds nftMu.
func (h *Host) installedVM(vmID string) (*vmSpec, error) {
	c, err := h.lastingConn()
	if err != nil {
		return nil, err
	}
	t := bridgeTableObj()
	name := vmChainName(vmID)
	rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
	if err != nil {
		return nil, fmt.Errorf("read chain bridge %s %s: %w", tableName, name, err)
	}
	if len(rules) == 0 {
		return nil, nil
	}
	tap, ip, ok := slotKeys(rules)
	if !ok {
		return nil, fmt.Errorf("chain bridge %s %s of vm %s matches no tap and address (a full sync repairs it)", tableName, name, vmID)
	}
	v := vmParts(vmID, ip, tap)
	return &v, nil
}

// slotKeys finds the TAP (iifname) and IPv4 source address (ip saddr) that
// a VM's anti-spoofing rules match.
func slotKeys(rules []*nftables.Rule) (tap string, ip netip.Addr, ok bool) {
	for _, r := range rules {
		for i := 0; i+1 < len(r.Exprs); i++ {
			cmp, isCmp := r.Exprs[i+1].(*expr.Cmp)
			if !isCmp || cmp.Op != expr.CmpOpEq {
				continue
			}
			switch e := r.Exprs[i].(type) {
			case *expr.Meta:
				if e.Key == expr.MetaKeyIIFNAME && tap == "" {
					tap = strings.TrimRight(string(cmp.Data), "\x00")
				}
			case *expr.Payload:
				if e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12 && e.Len == 4 && !ip.IsValid() {
					ip, _ = netip.AddrFromSlice(cmp.Data)
				}
			}
		}
	}
	return tap, ip, tap != "" && ip.IsValid()
}

// putVM queues a VM's chains, rules and map elements. old is what it has
// installed already (nil: nothing), which is replaced.
func (b *batch) putVM(v vmSpec, old *vmSpec) {
	if old == nil {
		b.addPart(v.egress)
		b.addPart(v.port)
		return
	}
	b.replacePart(v.egress, old.egress)
	b.replacePart(v.port, old.port)
}

// addPart queues a new chain, its rules and then the element that jumps
// to it.
func (b *batch) addPart(p vmPart) {
	b.addChain(p.chain.chain)
	b.addChainRules(p.chain)
	b.addElems(p.set, []elemSpec{p.elem})
}

// replacePart queues the replacement of a chain's rules and, if the key
// changed, of its element. The chain keeps its name (it derives from the
// VM id), so an unchanged element needs nothing.
func (b *batch) replacePart(p, old vmPart) {
	b.flushChain(p.chain.chain)
	b.addChainRules(p.chain)
	if !bytes.Equal(p.elem.key, old.elem.key) {
		b.delElem(old.set, old.elem.key)
		b.addElems(p.set, []elemSpec{p.elem})
	}
}

// delPart queues the deletion of an element and then of the chain it
// jumped to, with its rules.
func (b *batch) delPart(p vmPart) {
	b.delElem(p.set, p.elem.key)
	b.delChain(p.chain.chain)
}

// nftConn returns an nftables connection to the Host's namespace. It opens
// a netlink socket per operation, so there is nothing to close.
func (h *Host) nftConn(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if h.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(h.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// apply replaces hearth's tables with rs in one batch; the caller holds
// nftMu. Each table is added
// (so the delete cannot fail on a fresh host), deleted with everything in
// it, and created again: its map, its chains, their rules and then the
// map's elements (which jump to the chains).
func (h *Host) apply(rs *ruleset) error {
	var b batch
	for _, t := range rs.tables() {
		b.addTable(t.table)
		b.delTable(t.table)
		b.addTable(t.table)
		b.addMap(t.vmMap.set)
		for _, ch := range t.chains {
			b.addChain(ch.chain)
		}
		for _, ch := range t.chains {
			b.addChainRules(ch)
		}
		b.addElems(t.vmMap.set, t.vmMap.elems)
	}
	if err := h.commit(&b); err != nil {
		return fmt.Errorf("apply nftables ruleset: %w", err)
	}
	return nil
}

// hearthTables are hearth's tables, in the order they are listed.
func hearthTables() []*nftables.Table {
	return []*nftables.Table{inetTableObj(), bridgeTableObj()}
}

// ensureTables installs the baseline ruleset unless hearth's tables, base
// chains and maps all exist already.
func (h *Host) ensureTables() error {
	missing, err := h.missingObjects()
	if err != nil || len(missing) == 0 {
		return err
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	return h.applyWithRoutes(nil)
}

// deleteTables removes hearth's tables in one batch; missing ones are fine.
func (h *Host) deleteTables() error {
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	var b batch
	for _, t := range hearthTables() {
		b.addTable(t)
		b.delTable(t)
	}
	if err := h.commit(&b); err != nil {
		return fmt.Errorf("delete nftables tables: %w", err)
	}
	h.routes.Store(nil)
	return nil
}

// missingObjects lists hearth's base chains and maps that do not exist, as
// "inet hearth forward" and "inet hearth map vm_egress".
func (h *Host) missingObjects() ([]string, error) {
	c, err := h.nftConn()
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, t := range hearthTables() {
		have, err := tableObjects(c, t)
		if err != nil {
			return nil, err
		}
		prefix := familyName(t.Family) + " " + tableName + " "
		for _, name := range expectedChains()[t.Family] {
			if !have[name] {
				missing = append(missing, prefix+name)
			}
		}
		if m := "map " + expectedMaps()[t.Family]; !have[m] {
			missing = append(missing, prefix+m)
		}
	}
	return missing, nil
}

// tableObjects returns the names of t's chains ("forward") and maps
// ("map vm_egress"); none if t does not exist.
func tableObjects(c *nftables.Conn, t *nftables.Table) (map[string]bool, error) {
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	have := map[string]bool{}
	if !hasTable(tables, t.Name) {
		return have, nil
	}
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == t.Name {
			have[ch.Name] = true
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list nftables maps: %w", err)
	}
	for _, s := range sets {
		if s.IsMap {
			have["map "+s.Name] = true
		}
	}
	return have, nil
}

// hasTable reports whether tables has one called name.
func hasTable(tables []*nftables.Table, name string) bool {
	for _, t := range tables {
		if t.Name == name {
			return true
		}
	}
	return false
}
