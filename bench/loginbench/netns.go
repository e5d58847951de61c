package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"

	"github.com/hearth-project/hearth/test/netnstest"
)

// Addresses of the link between the daemon's namespace and the outside
// one (TEST-NET-2, as in the e2e tests): the guests reach the fake
// authorization server through the daemon's NAT.
const (
	outsideHostIP = "198.51.100.1"
	outsideIP     = "198.51.100.2"
)

// namespaces are the two network namespaces the bench makes: the daemon's
// and the "outside" one standing in for the internet. Nothing else is
// touched.
type namespaces struct {
	daemon, outside string
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// makeNamespaces creates both namespaces (replacing leftovers of these
// names from an interrupted run) joined by a veth pair.
func makeNamespaces(daemon, outside string) (*namespaces, error) {
	n := &namespaces{daemon: daemon, outside: outside}
	n.remove()
	steps := [][]string{
		{"ip", "netns", "add", daemon},
		{"ip", "netns", "add", outside},
		{"ip", "-n", daemon, "link", "set", "lo", "up"},
		{"ip", "-n", outside, "link", "set", "lo", "up"},
		{"ip", "-n", daemon, "link", "add", "veth-out", "type", "veth", "peer", "name", "veth-in", "netns", outside},
		{"ip", "-n", daemon, "addr", "add", outsideHostIP + "/24", "dev", "veth-out"},
		{"ip", "-n", daemon, "link", "set", "veth-out", "up"},
		{"ip", "-n", outside, "addr", "add", outsideIP + "/24", "dev", "veth-in"},
		{"ip", "-n", outside, "link", "set", "veth-in", "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			n.remove()
			return nil, err
		}
	}
	return n, nil
}

// remove deletes both namespaces (the veth pair goes with them).
func (n *namespaces) remove() {
	_ = exec.Command("ip", "netns", "del", n.daemon).Run()
	_ = exec.Command("ip", "netns", "del", n.outside).Run()
}

// inNetns runs fn on an OS thread switched into the named namespace.
func inNetns(name string, fn func() error) error { return netnstest.Run(name, fn) }

// nsDialer dials from inside the named namespace: the bench's own process
// reaches the daemon's loopback there, as a browser on that host would.
func nsDialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnstest.Dialer(name)
}
