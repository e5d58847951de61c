package e2e

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/test/netnstest"
	"github.com/hearth-project/hearth/test/testrun"
)

// newNetns creates a network namespace with loopback up and deletes it
// when the test ends. Every address a test uses lives in such namespaces.
func newNetns(t *testing.T) string {
	t.Helper()
	name := testrun.NetnsName("e2e")
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on an OS thread switched into the named namespace.
func inNetns(name string, fn func() error) error { return netnstest.Run(name, fn) }

// serveIn listens on addr inside the named namespace until the test ends
// and hands every connection, one after another, to handle, which closes
// it.
func serveIn(t *testing.T, ns, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
}

// hostServe accepts TCP connections on addr in the daemon's namespace
// (the host) and closes them.
func hostServe(t *testing.T, d *daemon, addr string) {
	t.Helper()
	serveIn(t, d.netns, addr, func(c net.Conn) { c.Close() })
}

// nsDialer dials from inside the named namespace.
func nsDialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnstest.Dialer(name)
}
