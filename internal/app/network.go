package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/network"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmnet"
)

// networkConfig turns the validated configuration into network.Config.
func networkConfig(cfg config.Config) (network.Config, error) {
	subnet, err := netip.ParsePrefix(cfg.Network.Subnet)
	if err != nil {
		return network.Config{}, fmt.Errorf("network.subnet: %w", err)
	}
	nc := network.Config{Bridge: cfg.Network.Bridge, Subnet: subnet, TAPPrefix: cfg.Network.TAPPrefix}
	for _, hp := range cfg.Network.HostPorts {
		proto, port, err := config.ParseHostPort(hp)
		if err != nil {
			return network.Config{}, fmt.Errorf("network.host_ports: %w", err)
		}
		nc.HostPorts = append(nc.HostPorts, network.PortRule{Protocol: proto, Port: port})
	}
	for _, d := range cfg.Network.Deny {
		p, err := config.ParseCIDR(d)
		if err != nil {
			return network.Config{}, fmt.Errorf("network.deny: %w", err)
		}
		nc.Deny = append(nc.Deny, p)
	}
	for _, a := range cfg.Network.AllowPrivate {
		p, err := config.ParseCIDR(a)
		if err != nil {
			return network.Config{}, fmt.Errorf("network.allow_private: %w", err)
		}
		nc.AllowPrivate = append(nc.AllowPrivate, p)
	}
	return nc, nc.Validate()
}

// defaultEgress is the configured egress policy: what VMs that ask for
// none get, and the most a user key may ask for.
func defaultEgress(cfg config.Config) vm.Egress {
	e := vm.Egress{Mode: cfg.Network.DefaultEgress}
	for _, r := range cfg.Network.DefaultAllow {
		e.Allow = append(e.Allow, vm.EgressRule{CIDR: r.CIDR, Protocol: r.Protocol, Port: r.Port})
	}
	return e
}

// routesRefresh is how often the host's routes are read again in case a
// change notification was lost; changes themselves are followed as the
// kernel announces them.
const routesRefresh = 30 * time.Second

// newNetworker builds the VM network service, or nil when networking is
// off, and keeps the firewall's list of the host's routes in step with
// the routing tables. close stops that and releases its netlink sockets.
func newNetworker(cfg config.Config, leases store.Leases, log *slog.Logger) (n vm.Networker, closeNet func(), err error) {
	if !cfg.Network.Enabled {
		return nil, func() {}, nil
	}
	nc, err := networkConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	host, err := network.NewHost(nc)
	if err != nil {
		return nil, nil, err
	}
	dns := cfg.Network.DNS
	if len(dns) == 0 {
		dns = hostNameservers("/etc/resolv.conf")
	}
	svc, err := vmnet.New(host, leases, dns, defaultEgress(cfg))
	if err != nil {
		host.Close()
		return nil, nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		host.WatchHostRoutes(ctx, routesRefresh, func(err error) {
			log.Warn("the firewall may not follow the host's routes", "err", err)
		})
	}()
	return svc, func() { stop(); <-watched; host.Close() }, nil
}

// hostNameservers returns the non-loopback nameservers of a resolv.conf
// (a guest cannot use the host's 127.0.0.53).
func hostNameservers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(fields[1]); err == nil && a.Is4() && !a.IsLoopback() {
			out = append(out, a.String())
		}
	}
	return out
}

// SetupHost sets up this host's network for VMs, idempotently: the
// bridge, ip_forward and hearth's nftables tables, as the daemon does
// when it starts. It says what is in place on out.
func SetupHost(ctx context.Context, cfg config.Config, out io.Writer) error {
	if !cfg.Network.Enabled {
		return errors.New("network.enabled is false: nothing to set up")
	}
	nc, err := networkConfig(cfg)
	if err != nil {
		return err
	}
	host, err := network.NewHost(nc)
	if err != nil {
		return err
	}
	defer host.Close()
	if err := host.Setup(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "bridge %s %s/%d up, ip_forward on, nftables tables in place\n", nc.Bridge, nc.Gateway(), nc.Subnet.Bits())
	return nil
}

func checkNetwork(ctx context.Context, cfg config.Config) []Check {
	if !cfg.Network.Enabled {
		return []Check{ok("network", "disabled (network.enabled = false): VMs get no NIC")}
	}
	nc, err := networkConfig(cfg)
	if err != nil {
		return []Check{failc("network", err.Error(), "fix the [network] section of the configuration")}
	}
	host, err := network.NewHost(nc)
	if err != nil {
		return []Check{failc("network", err.Error(), "check the [network] configuration")}
	}
	defer host.Close()
	problems := host.Check(ctx)
	if len(problems) == 0 {
		return []Check{ok("network", fmt.Sprintf("bridge %s %s/%d up, ip_forward on, nftables tables present", nc.Bridge, nc.Gateway(), nc.Subnet.Bits()))}
	}
	var out []Check
	for _, p := range problems {
		out = append(out, warn("network", p.Check+": "+p.Message, p.Fix))
	}
	return out
}
