package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

const (
	defaultLinkTimeout = 10 * time.Second // for the NIC to appear (virtio_net may still be probing)
	linkPollInterval   = 100 * time.Millisecond
	defaultResolvConf  = "/etc/resolv.conf"
	loopback           = "lo"
)

// errNoLink is wrapped by netOps.LinkByMAC when no link has the address.
var errNoLink = errors.New("no such link")

// netOps is the part of the kernel's network configuration the agent uses.
// netlinkOps is the real one; tests use a fake. Every method is idempotent:
// applying the same configuration twice leaves the same state.
type netOps interface {
	// LinkByMAC returns the name of the link with hardware address mac, or
	// an error wrapping errNoLink.
	LinkByMAC(mac net.HardwareAddr) (string, error)
	// LinkUp sets the link administratively up.
	LinkUp(name string) error
	// ReplaceAddr makes addr the link's only address of its family, apart
	// from link-local ones other than mmdsLocalAddr (which is the agent's
	// own, see mmds.go, and goes too).
	ReplaceAddr(name string, addr netip.Prefix) error
	// SetMTU sets the link's MTU.
	SetMTU(name string, mtu int) error
	// ReplaceDefaultRoute makes gw, through the link, the default route of
	// gw's family.
	ReplaceDefaultRoute(name string, gw netip.Addr) error

	// The rest is for reaching MMDS before the host has configured the
	// network (mmds.go).

	// FirstNIC returns the name of the guest's first hardware Ethernet link
	// (lowest index; not loopback nor a virtual device such as ifb, veth or
	// a bridge), or an error wrapping errNoLink.
	FirstNIC() (string, error)
	// IPv4Addrs returns the link's IPv4 addresses, link-local ones included.
	IPv4Addrs(name string) ([]netip.Prefix, error)
	// AddLinkAddr adds addr to the link with link scope. An address that is
	// already there is not an error.
	AddLinkAddr(name string, addr netip.Prefix) error
	// DelAddr removes addr from the link. One that is not there is not an
	// error.
	DelAddr(name string, addr netip.Prefix) error
	// AddLinkRoute adds a link-scope route to dst through the link in the
	// main table and reports whether it did: false, without an error, when
	// a route to dst was already there.
	AddLinkRoute(name string, dst netip.Prefix) (added bool, err error)
	// DelLinkRoute removes the link-scope route to dst through the link.
	// One that is not there is not an error.
	DelLinkRoute(name string, dst netip.Prefix) error
}

// networker applies network configurations.
type networker struct {
	ops         netOps
	linkTimeout time.Duration
	resolvConf  string // path of resolv.conf
}

// apply configures the NIC with cfg's MAC: it waits for the link, brings lo
// up, replaces the link's addresses, sets its MTU, brings it up, replaces
// the default route and writes resolv.conf. Every step is idempotent, so
// applying the same cfg again (after a reconnect) changes nothing. A
// resolv.conf that cannot be written is reported in DNSError, not as an
// error.
func (w networker) apply(ctx context.Context, cfg agentapi.NetworkConfig) (agentapi.NetworkReady, error) {
	n, err := cfg.Parse()
	if err != nil {
		return agentapi.NetworkReady{}, fmt.Errorf("invalid network config: %w", err)
	}
	name, err := w.awaitLink(ctx, n.MAC)
	if err != nil {
		return agentapi.NetworkReady{}, err
	}
	if err := w.configureLink(name, n); err != nil {
		return agentapi.NetworkReady{}, err
	}
	ready := agentapi.NetworkReady{Interface: name, Address: n.Address.String()}
	if n.Gateway.IsValid() {
		ready.Gateway = n.Gateway.String()
	}
	if len(n.DNS) > 0 {
		if err := writeResolvConf(w.resolvConf, n.DNS); err != nil {
			ready.DNSError = errorText(err)
		}
	}
	return ready, nil
}

// configureLink runs the netlink steps, in order.
func (w networker) configureLink(name string, n agentapi.ParsedNetwork) error {
	if err := w.ops.LinkUp(loopback); err != nil {
		return fmt.Errorf("bring %s up: %w", loopback, err)
	}
	if err := w.ops.ReplaceAddr(name, n.Address); err != nil {
		return fmt.Errorf("set address %s on %s: %w", n.Address, name, err)
	}
	if n.MTU > 0 {
		if err := w.ops.SetMTU(name, n.MTU); err != nil {
			return fmt.Errorf("set mtu %d on %s: %w", n.MTU, name, err)
		}
	}
	if err := w.ops.LinkUp(name); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if n.Gateway.IsValid() {
		if err := w.ops.ReplaceDefaultRoute(name, n.Gateway); err != nil {
			return fmt.Errorf("set default route via %s on %s: %w", n.Gateway, name, err)
		}
	}
	return nil
}

// awaitLink returns the name of the link with address mac, polling for up
// to linkTimeout while it does not exist yet.
func (w networker) awaitLink(ctx context.Context, mac net.HardwareAddr) (string, error) {
	deadline := time.Now().Add(w.linkTimeout)
	for {
		name, err := w.ops.LinkByMAC(mac)
		if err == nil {
			return name, nil
		}
		if !time.Now().Before(deadline) {
			return "", fmt.Errorf("find link with mac %s within %v: %w", mac, w.linkTimeout, err)
		}
		if err := sleep(ctx, linkPollInterval); err != nil {
			return "", err
		}
	}
}

// resolvConfContent is the resolv.conf naming servers.
func resolvConfContent(servers []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("# Written by hearth-agent from the host's network configuration.\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return []byte(b.String())
}

// writeResolvConf atomically replaces path with a resolv.conf naming
// servers (a temporary file in the same directory, synced, then renamed
// over it; a symlink at path is replaced by the file). A file that already
// says the same is left alone, so this works on a read-only root that was
// set up right.
func writeResolvConf(path string, servers []netip.Addr) error {
	content := resolvConfContent(servers)
	if old, err := readSmallFile(path); err == nil && bytes.Equal(old, content) {
		return nil
	}
	if err := writeFileAtomic(path, content, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file next to path and renames
// it to path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
