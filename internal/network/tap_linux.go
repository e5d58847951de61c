package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxTAPAttempts bounds how many names CreateTAP tries for one VM.
const maxTAPAttempts = 4

// tapFlags are the flags QEMU's -netdev tap opens a TAP with (it sets
// them again when it attaches); IFF_TUN_EXCL makes creation fail instead
// of attaching to an existing device of the same name.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL

// CreateTAP returns the name of vmID's TAP, creating it if needed: a
// persistent single-queue TAP owned by root, marked with the alias
// "hearth:<vmID>", attached to the bridge and up. If the VM already has a
// TAP it is returned (and re-attached and brought up if needed). If the
// derived name is taken by a link that is not this VM's, the next attempt's
// name is tried; other links are never changed. Only the VM's possible
// names are looked up, so the cost does not depend on how many links there
// are.
func (h *Host) CreateTAP(ctx context.Context, vmID string) (string, error) {
	if err := checkVMID(vmID); err != nil {
		return "", fmt.Errorf("create tap: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("create tap for vm %s: %w", vmID, err)
	}
	h.tapMu.Lock()
	defer h.tapMu.Unlock()

	br, err := h.bridge()
	if err == nil && br == nil {
		err = fmt.Errorf("bridge %s does not exist (run setup first)", h.cfg.Bridge)
	}
	if err != nil {
		return "", fmt.Errorf("create tap for vm %s: %w", vmID, err)
	}
	own, free, err := h.tapCandidates(vmID)
	if err != nil {
		return "", fmt.Errorf("create tap for vm %s: %w", vmID, err)
	}
	if len(own) > 0 {
		link := own[0]
		if err := h.attach(link, br); err != nil {
			return "", fmt.Errorf("create tap %s: %w", link.Attrs().Name, err)
		}
		return link.Attrs().Name, nil
	}
	for _, name := range free {
		err := h.newTAP(name, vmID, br)
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			continue // created by someone else since the lookup
		}
		if err != nil {
			return "", fmt.Errorf("create tap %s: %w", name, err)
		}
		return name, nil
	}
	return "", fmt.Errorf("create tap for vm %s: names %s to %s are all taken by other links",
		vmID, TAPName(h.cfg.TAPPrefix, vmID, 0), TAPName(h.cfg.TAPPrefix, vmID, maxTAPAttempts-1))
}

// newTAP creates the persistent TAP name for vmID and attaches it to br.
// The alias is set before the TAP is made persistent, so a crash in between
// leaves nothing behind (a TAP without persistence dies with its fd).
func (h *Host) newTAP(name, vmID string, br netlink.Link) error {
	err := inNetNS(h.ns, func() (err error) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		defer func() {
			if cerr := unix.Close(fd); cerr != nil && err == nil {
				err = fmt.Errorf("close /dev/net/tun: %w", cerr)
			}
		}()
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(tapFlags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, 0); err != nil {
			return fmt.Errorf("TUNSETOWNER: %w", err)
		}
		link, err := h.nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("look up new tap: %w", err)
		}
		if err := h.nl.LinkSetAlias(link, tapAlias(vmID)); err != nil {
			return fmt.Errorf("set alias: %w", err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			return fmt.Errorf("TUNSETPERSIST: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	link, err := h.nl.LinkByName(name)
	if err == nil {
		err = h.attach(link, br)
	}
	if err != nil {
		if derr := h.nl.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}}); derr != nil && !isNotFound(derr) {
			return errors.Join(err, fmt.Errorf("remove half-made tap: %w", derr))
		}
		return err
	}
	return nil
}

// attach puts link on the bridge and brings it up, if it is not already.
func (h *Host) attach(link netlink.Link, br netlink.Link) error {
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.nl.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach to bridge %s: %w", h.cfg.Bridge, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	return nil
}

// DeleteTAP removes a hearth TAP. A missing TAP is fine; a link without
// hearth's prefix and alias is refused (ErrNotOwned).
func (h *Host) DeleteTAP(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	h.tapMu.Lock()
	defer h.tapMu.Unlock()
	link, err := h.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	if _, ok := h.tapOwner(link); !ok {
		return fmt.Errorf("delete tap %s (alias %q): %w", name, link.Attrs().Alias, ErrNotOwned)
	}
	if err := h.nl.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// TAPs returns every hearth TAP (prefix and alias), name → VM id.
func (h *Host) TAPs(ctx context.Context) (map[string]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	links, err := h.links()
	if err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	taps := map[string]string{}
	for _, l := range links {
		if id, ok := h.tapOwner(l); ok {
			taps[l.Attrs().Name] = id
		}
	}
	return taps, nil
}

// tapOwner returns the VM id of a hearth TAP; ok is false for other links.
func (h *Host) tapOwner(l netlink.Link) (vmID string, ok bool) {
	if !strings.HasPrefix(l.Attrs().Name, h.cfg.TAPPrefix) {
		return "", false
	}
	return vmIDFromAlias(l.Attrs().Alias)
}

// TAPsOf returns the names of vmID's TAPs: the hearth TAPs (prefix and
// alias) among the names CreateTAP gives the VM. Only those names are
// looked up, so the cost does not depend on how many links there are.
func (h *Host) TAPsOf(ctx context.Context, vmID string) ([]string, error) {
	if err := checkVMID(vmID); err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list taps of vm %s: %w", vmID, err)
	}
	own, _, err := h.tapCandidates(vmID)
	if err != nil {
		return nil, fmt.Errorf("list taps of vm %s: %w", vmID, err)
	}
	names := make([]string, len(own))
	for i, l := range own {
		names[i] = l.Attrs().Name
	}
	return names, nil
}

// tapCandidates looks up each name TAPName gives vmID, in attempt order:
// own are the VM's TAPs among them, free the names no link has.
func (h *Host) tapCandidates(vmID string) (own []netlink.Link, free []string, err error) {
	for attempt := range maxTAPAttempts {
		name := TAPName(h.cfg.TAPPrefix, vmID, attempt)
		link, err := h.nl.LinkByName(name)
		switch {
		case isNotFound(err):
			free = append(free, name)
		case err != nil:
			return nil, nil, fmt.Errorf("look up %s: %w", name, err)
		default:
			if id, ok := h.tapOwner(link); ok && id == vmID {
				own = append(own, link)
			}
		}
	}
	return own, free, nil
}

// links lists every link, retrying dumps that a concurrent change
// interrupted.
func (h *Host) links() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = h.nl.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}
