// Package network is the host side of VM networking: one Linux bridge whose
// address is the guests' gateway, one persistent TAP per VM attached to it,
// and hearth's own nftables tables that isolate VMs from each other and from
// the host and apply each VM's egress policy.
//
// Everything is done through netlink (rtnetlink for links and addresses,
// nf_tables for rules); nothing shells out to ip or nft. A Host can operate
// on another network namespace (WithNetNS), which is how the tests run
// without touching the machine's own network.
//
// Address allocation is not done here: callers pass already-allocated
// addresses in Slots.
//
// # Firewall layout
//
// hearth owns two tables, inet hearth and bridge hearth. Their base chains
// (input, forward, egress and postrouting; prerouting and forward) are the
// same whatever VMs there are, and end in drops for anything from the VMs
// that no rule accepted. Each VM has a chain of its own in each table,
// named vm-<hash of its id>, reached through a verdict map:
//
//   - inet: the egress chain first drops what no VM reaches whatever its
//     policy: link-local and cloud metadata addresses, Config.Deny, the
//     host's own addresses; it sends Config.AllowPrivate to the VMs'
//     chains, then drops private and reserved ranges and (through the
//     host_routes chain, kept in step with the host's routing tables by
//     RefreshHostRoutes and WatchHostRoutes) the subnets routed through
//     the host's interfaces. What is left it looks up by source address
//     in the map vm_egress, whose element for the VM's address jumps to
//     its chain, which holds its egress policy (accept, drop, or the
//     allowlist then drop).
//   - bridge: prerouting looks the input interface up in the map vm_ports,
//     whose element for the VM's TAP jumps to its chain, which accepts IPv4
//     and ARP from the VM's MAC and address; anything else returns and meets
//     the final drop of every hearth TAP.
//
// A packet costs a hash lookup however many VMs there are, and a VM is
// added or removed by changing only its own chains and map elements, so
// the base chains' final drops stay last by construction.
//
// # Changing the rules
//
// AddSlot and RemoveSlot change one VM in one atomic nf_tables transaction
// of a handful of messages; that is what attaching and detaching a VM
// does. SyncRules replaces both tables with exactly the given slots in one
// atomic transaction, whatever their number (thousands, with socket buffers
// sized to the batch); that is what a daemon start does. Both give the
// same ruleset for the same slots.
package network
