package network

import (
	"context"
	"fmt"

	"github.com/google/nftables"
)

// SyncRules makes hearth's nftables tables express exactly these slots (and
// the configured host ports), replacing both tables in one atomic nf_tables
// transaction: packets see either the old rules or the new ones, never a
// mix, and nothing outside hearth's tables is touched. Zero slots give the
// baseline ruleset. The caller passes every VM's slot each time.
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
	if err := h.apply(buildRuleset(h.cfg, norm)); err != nil {
		return fmt.Errorf("sync rules (%d slots): %w", len(norm), err)
	}
	return nil
}

// nftConn returns an nftables connection to the Host's namespace. It opens
// a netlink socket per operation, so there is nothing to close.
func (h *Host) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if h.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(h.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// apply replaces hearth's tables with rs in one batch. Each table is added
// (so the delete cannot fail on a fresh host), deleted with everything in
// it, and created again with its chains and rules.
func (h *Host) apply(rs *ruleset) error {
	c, err := h.nftConn()
	if err != nil {
		return err
	}
	for _, t := range rs.tables {
		c.AddTable(t.table)
		c.DelTable(t.table)
		c.AddTable(t.table)
		for _, ch := range t.chains {
			c.AddChain(ch.chain)
		}
		for _, ch := range t.chains {
			for _, r := range ch.rules {
				c.AddRule(r.nftRule(ch.chain))
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply nftables ruleset: %w", err)
	}
	return nil
}

// hearthTables are hearth's tables, in the order they are listed.
func hearthTables() []*nftables.Table {
	return []*nftables.Table{
		{Name: tableName, Family: nftables.TableFamilyINet},
		{Name: tableName, Family: nftables.TableFamilyBridge},
	}
}

// ensureTables installs the baseline ruleset unless hearth's tables and
// chains all exist already.
func (h *Host) ensureTables() error {
	missing, err := h.missingChains()
	if err != nil || len(missing) == 0 {
		return err
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	return h.apply(buildRuleset(h.cfg, nil))
}

// deleteTables removes hearth's tables in one batch; missing ones are fine.
func (h *Host) deleteTables() error {
	c, err := h.nftConn()
	if err != nil {
		return err
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	for _, t := range hearthTables() {
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables tables: %w", err)
	}
	return nil
}

// missingChains lists hearth's chains that do not exist, as
// "inet hearth forward".
func (h *Host) missingChains() ([]string, error) {
	c, err := h.nftConn()
	if err != nil {
		return nil, err
	}
	want := expectedChains()
	var missing []string
	for _, t := range hearthTables() {
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return nil, fmt.Errorf("list nftables chains: %w", err)
		}
		have := map[string]bool{}
		for _, ch := range chains {
			if ch.Table.Name == tableName {
				have[ch.Name] = true
			}
		}
		for _, name := range want[t.Family] {
			if !have[name] {
				missing = append(missing, familyName(t.Family)+" "+tableName+" "+name)
			}
		}
	}
	return missing, nil
}
