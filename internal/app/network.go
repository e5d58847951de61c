package app

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

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
	return nc, nc.Validate()
}

// newNetworker builds the VM network service, or nil when networking is
// off. close releases its netlink sockets.
func newNetworker(cfg config.Config, leases store.Leases) (n vm.Networker, close func(), err error) {
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
	svc, err := vmnet.New(host, leases, dns, vm.Egress{Mode: cfg.Network.DefaultEgress})
	if err != nil {
		host.Close()
		return nil, nil, err
	}
	return svc, func() { host.Close() }, nil
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

// cmdHost runs `hearth host setup`: the bridge, ip_forward and hearth's
// nftables tables, idempotently.
func cmdHost(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 || args[0] != "setup" {
		return errors.New("usage: hearth host setup")
	}
	fs := flag.NewFlagSet("host setup", flag.ContinueOnError)
	var c common
	c.register(fs)
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
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
	fmt.Fprintf(stdout, "bridge %s %s/%d up, ip_forward on, nftables tables in place\n", nc.Bridge, nc.Gateway(), nc.Subnet.Bits())
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
