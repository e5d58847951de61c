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
// addresses in Slots, and SyncRules makes the firewall express exactly those
// Slots in one atomic nf_tables transaction.
package network
