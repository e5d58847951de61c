package network

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on an OS thread in network namespace ns, or directly when
// ns is not open (the current namespace). Use it for what netlink handles
// cannot target: opening /dev/net/tun and /proc/sys/net.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked: when this goroutine returns, the runtime
		// ends the thread instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ipForwardPath is the IPv4 forwarding switch of the opener's namespace.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// readSysctl reads a /proc/sys file in ns.
func readSysctl(ns netns.NsHandle, path string) (string, error) {
	var val string
	err := inNetNS(ns, func() error {
		b, err := os.ReadFile(path)
		val = string(bytes.TrimSpace(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return val, nil
}

// writeSysctl sets a /proc/sys file in ns, skipping the write when it
// already holds val.
func writeSysctl(ns netns.NsHandle, path, val string) error {
	err := inNetNS(ns, func() error {
		cur, err := os.ReadFile(path)
		if err == nil && string(bytes.TrimSpace(cur)) == val {
			return nil
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString(val)
		return errors.Join(werr, f.Close())
	})
	if err != nil {
		return fmt.Errorf("set %s=%s: %w", path, val, err)
	}
	return nil
}
