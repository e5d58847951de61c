package fctest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/test/netnstest"
)

// guestMMDSURL is where the fake guest's agent finds MMDS when the guest
// has a network namespace of its own: at Firecracker's address, inside it.
const guestMMDSURL = "http://169.254.169.254"

// guestNet is the network of a fake guest that runs in a network namespace
// of its own (the agent's, made when it started): per configured interface
// a TAP inside that namespace named after the interface and carrying its
// guest MAC, whose frames are copied to and from the host TAP the interface
// was configured with — what Firecracker's virtio-net device does between
// the guest's driver and the TAP. MMDS listens on its address inside the
// namespace. Nothing is created in the fake's own namespace: a host TAP
// that does not exist is not made (the guest's frames then go nowhere).
type guestNet struct {
	files []*os.File
	mmds  net.Listener
	wg    sync.WaitGroup
}

// setupGuestNet builds the guest's network in the namespace of pid. warn
// reports what could not be connected.
func setupGuestNet(pid int, ifaces []NetworkInterface, withMMDS bool, warn func(string, ...any)) (*guestNet, error) {
	ns, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("guest network namespace: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("guest netlink: %w", err)
	}
	defer h.Close()
	gn := &guestNet{}
	fail := func(err error) (*guestNet, error) { gn.close(); return nil, err }

	lo, err := h.LinkByName("lo")
	if err != nil {
		return fail(fmt.Errorf("guest lo: %w", err))
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fail(fmt.Errorf("guest lo up: %w", err))
	}
	if withMMDS {
		addr, _ := netlink.ParseAddr("169.254.169.254/32")
		if err := h.AddrAdd(lo, addr); err != nil {
			return fail(fmt.Errorf("guest MMDS address: %w", err))
		}
	}
	guestTaps := make([]*os.File, len(ifaces))
	err = netnstest.RunIn(ns, func() error {
		for i, nic := range ifaces {
			f, err := openTAP(nic.IfaceID)
			if err != nil {
				return fmt.Errorf("guest NIC %s: %w", nic.IfaceID, err)
			}
			guestTaps[i] = f
			gn.files = append(gn.files, f)
		}
		if withMMDS {
			ln, err := net.Listen("tcp", "169.254.169.254:80")
			if err != nil {
				return fmt.Errorf("guest MMDS: %w", err)
			}
			gn.mmds = ln
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	for i, nic := range ifaces {
		link, err := h.LinkByName(nic.IfaceID)
		if err != nil {
			return fail(fmt.Errorf("guest NIC %s: %w", nic.IfaceID, err))
		}
		if nic.GuestMAC != "" {
			mac, err := net.ParseMAC(nic.GuestMAC)
			if err != nil {
				return fail(fmt.Errorf("guest NIC %s: %w", nic.IfaceID, err))
			}
			if err := h.LinkSetHardwareAddr(link, mac); err != nil {
				return fail(fmt.Errorf("guest NIC %s MAC: %w", nic.IfaceID, err))
			}
		}
		if _, err := netlink.LinkByName(nic.HostDevName); err != nil {
			warn("fctest: host TAP %s not found: guest NIC %s is not connected", nic.HostDevName, nic.IfaceID)
			continue
		}
		host, err := openTAP(nic.HostDevName)
		if err != nil {
			return fail(fmt.Errorf("open host TAP %s: %w", nic.HostDevName, err))
		}
		gn.files = append(gn.files, host)
		gn.copy(host, guestTaps[i])
		gn.copy(guestTaps[i], host)
	}
	return gn, nil
}

// copy forwards frames from src to dst until either is closed.
func (gn *guestNet) copy(dst, src *os.File) {
	gn.wg.Add(1)
	go func() {
		defer gn.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			// A frame the other side cannot take is dropped, as a
			// NIC drops it.
			if _, err := dst.Write(buf[:n]); err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
		}
	}()
}

func (gn *guestNet) close() {
	if gn == nil {
		return
	}
	if gn.mmds != nil {
		gn.mmds.Close()
	}
	for _, f := range gn.files {
		f.Close()
	}
	gn.wg.Wait()
}

// openTAP attaches to the TAP device name (creating it, in the calling
// thread's network namespace, if it does not exist), non-blocking so Close
// interrupts a Read.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
