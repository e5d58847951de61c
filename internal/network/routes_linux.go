package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The host's routed subnets (its LAN, a VPN's networks, a container
// bridge's…) are the operator's network, which no VM reaches unless the
// operator says so (Config.AllowPrivate). The kernel cannot tell a
// connected or static route from the default one in a rule, so hearth
// lists the routes and keeps the host_routes chain in step with them:
// at every SyncRules, and through WatchHostRoutes whenever the routing
// tables change (a DHCP lease, an interface coming up). The host's own
// addresses need no list: "fib daddr type local" asks the kernel.
const (
	// minRouteBits: shorter routes are default routes in disguise (a
	// VPN's 0.0.0.0/1 and 128.0.0.0/1), not a network of the operator's.
	minRouteBits = 8
	// maxHostRoutes bounds the host_routes chain (one rule each, after
	// aggregation). A host with more (a full routing table) cannot run
	// hearth's firewall as it stands; SyncRules says so.
	maxHostRoutes = 1024
	// routeSettle is how long WatchHostRoutes waits after a change for
	// the ones that come with it (an address brings several routes).
	routeSettle = 100 * time.Millisecond
)

// HostRoutes returns the subnets the installed rules deny as the host's
// own network, aggregated; nil before this Host installed its rules.
func (h *Host) HostRoutes() []netip.Prefix {
	if p := h.routes.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// listHostRoutes returns the IPv4 subnets routed through the host's
// interfaces, from every routing table but the local one (the host's own
// addresses, which fib matches), aggregated: unicast routes of at least
// minRouteBits, except those through hearth's bridge (the VMs' subnet,
// which never reaches the egress chain).
func (h *Host) listHostRoutes() ([]netip.Prefix, error) {
	brIndex := -1
	if br, err := h.nl.LinkByName(h.cfg.Bridge); err == nil {
		brIndex = br.Attrs().Index
	} else if !isNotFound(err) {
		return nil, fmt.Errorf("look up bridge %s: %w", h.cfg.Bridge, err)
	}
	var (
		routes []netlink.Route
		err    error
	)
	for range 5 { // a dump the kernel interrupts (the tables changed) is retried
		routes, err = h.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_LOCAL || r.Type != unix.RTN_UNICAST || r.Dst == nil || r.LinkIndex == brIndex {
			continue
		}
		ones, bits := r.Dst.Mask.Size()
		addr, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok || bits != 32 || ones < minRouteBits {
			continue
		}
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	out = aggregate(out)
	if len(out) > maxHostRoutes {
		return nil, fmt.Errorf("the host routes %d subnets through its interfaces, more than the %d hearth's firewall can keep VMs from", len(out), maxHostRoutes)
	}
	return out, nil
}

// RefreshHostRoutes brings the host_routes chain in step with the host's
// routes, in one atomic transaction that touches nothing else; it reports
// whether they had changed. Before this Host installed its rules (Setup,
// SyncRules) there is nothing to refresh.
func (h *Host) RefreshHostRoutes(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	h.nftMu.Lock()
	defer h.nftMu.Unlock()
	cur := h.routes.Load()
	if cur == nil {
		return false, nil
	}
	routes, err := h.listHostRoutes()
	if err != nil {
		return false, fmt.Errorf("refresh host routes: %w", err)
	}
	if slices.Equal(routes, *cur) {
		return false, nil
	}
	c := hostRoutesChain(routes)
	var b batch
	b.flushChain(c.chain)
	b.addChainRules(c)
	if err := h.commit(&b); err != nil {
		return false, fmt.Errorf("refresh host routes: %w", err)
	}
	h.routes.Store(&routes)
	return true, nil
}

// WatchHostRoutes refreshes the host_routes chain whenever the host's
// routing tables change, and every interval in case a notification was
// lost, until ctx ends. report gets what goes wrong (nil: nothing is
// reported); watching goes on.
func (h *Host) WatchHostRoutes(ctx context.Context, interval time.Duration, report func(error)) {
	if report == nil {
		report = func(error) {}
	}
	refresh := func() {
		if _, err := h.RefreshHostRoutes(ctx); err != nil && ctx.Err() == nil {
			report(err)
		}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	settle := time.NewTimer(routeSettle)
	settle.Stop()
	defer settle.Stop()
	for ctx.Err() == nil {
		updates, stop, err := h.subscribeRoutes(ctx, report)
		if err != nil {
			report(fmt.Errorf("watch host routes: %w", err))
		}
		refresh() // whatever changed while not subscribed
		for updates != nil {
			select {
			case <-ctx.Done():
				updates = nil
			case _, ok := <-updates:
				if !ok { // the subscription broke: subscribe again
					updates = nil
					continue
				}
				settle.Reset(routeSettle)
			case <-settle.C:
				refresh()
			case <-tick.C:
				refresh()
			}
		}
		stop()
		// Not subscribed: poll until the next try.
		select {
		case <-ctx.Done():
		case <-tick.C:
			refresh()
		case <-time.After(time.Second):
		}
	}
}

// subscribeRoutes subscribes to the host's route changes; stop ends the
// subscription and waits for it to let go of its channel.
func (h *Host) subscribeRoutes(ctx context.Context, report func(error)) (<-chan netlink.RouteUpdate, func(), error) {
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	opts := netlink.RouteSubscribeOptions{ErrorCallback: func(err error) {
		select {
		case <-done: // closing the socket fails its read: not news
		default:
			if ctx.Err() == nil {
				report(fmt.Errorf("watch host routes: %w", err))
			}
		}
	}}
	if h.ns.IsOpen() {
		ns := h.ns
		opts.Namespace = &ns
	}
	if err := netlink.RouteSubscribeWithOptions(updates, done, opts); err != nil {
		close(done)
		return nil, func() {}, err
	}
	stop := func() {
		close(done)
		for range updates { // the reader ends (closing it) once the socket is closed
		}
	}
	return updates, stop, nil
}
