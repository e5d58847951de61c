// Package netnstest runs code inside network namespaces, for tests and
// benchmarks that keep all their traffic in namespaces they made.
package netnstest

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs fn on an OS thread switched into the named namespace (one made
// with "ip netns add"). Sockets created by fn stay in that namespace after
// it returns.
func Run(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer ns.Close()
	return RunIn(ns, fn)
}

// RunIn is Run for a namespace handle. A thread that cannot be switched
// back stays locked, so it ends with its goroutine instead of serving
// others in the wrong namespace.
func RunIn(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err == nil {
		runtime.UnlockOSThread()
	}
	return ferr
}

// Dialer dials from inside the named namespace.
func Dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := Run(name, func() error {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			conn = c
			return err
		})
		return conn, err
	}
}
