package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// vsockBacklog is the listen backlog: the host connects once at a time.
const vsockBacklog = 8

// vsockListener is a net.Listener on an AF_VSOCK port. The net package
// knows no AF_VSOCK (net.FileListener and net.FileConn fail on such
// sockets), so the sockets are non-blocking descriptors wrapped with
// os.NewFile: those use the runtime's poller, so Close interrupts a
// blocked Accept, and deadlines and Close interrupt a connection's I/O.
type vsockListener struct {
	f      *os.File
	addr   vsockAddr
	closed atomic.Bool
}

// listenVsock listens on port for any CID (VMADDR_PORT_ANY picks a free
// port; Addr says which).
func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, os.NewSyscallError("socket", err))
	}
	fail := func(call string, err error) (*vsockListener, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, os.NewSyscallError(call, err))
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, vsockBacklog); err != nil {
		return fail("listen", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	local := vsockAddrOf(sa)
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock:"+strconv.FormatUint(uint64(local.port), 10)), addr: local}, nil
}

// Accept implements net.Listener. Its connections are *vsockConn.
func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, l.acceptErr(err)
	}
	var (
		nfd  int
		sa   unix.Sockaddr
		aerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		for {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR && aerr != unix.ECONNABORTED {
				return aerr != unix.EAGAIN // false: wait until readable
			}
		}
	})
	if err != nil {
		return nil, l.acceptErr(err)
	}
	if aerr != nil {
		return nil, l.acceptErr(os.NewSyscallError("accept4", aerr))
	}
	remote := vsockAddrOf(sa)
	f := os.NewFile(uintptr(nfd), "vsock:"+remote.String())
	return &vsockConn{File: f, local: l.addr, remote: remote}, nil
}

func (l *vsockListener) acceptErr(err error) error {
	if l.closed.Load() {
		return net.ErrClosed
	}
	return &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: err}
}

// Close implements net.Listener.
func (l *vsockListener) Close() error {
	if l.closed.Swap(true) {
		return net.ErrClosed
	}
	return l.f.Close()
}

// Addr implements net.Listener.
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock connection: *os.File gives it Read,
// Write, Close and the deadlines.
type vsockConn struct {
	*os.File
	local, remote vsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// vsockAddr is a vsock address.
type vsockAddr struct{ cid, port uint32 }

func vsockAddrOf(sa unix.Sockaddr) vsockAddr {
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		return vsockAddr{cid: vm.CID, port: vm.Port}
	}
	return vsockAddr{}
}

func (a vsockAddr) Network() string { return "vsock" }

// String is "CID:PORT", with "any" for VMADDR_CID_ANY.
func (a vsockAddr) String() string {
	cid := strconv.FormatUint(uint64(a.cid), 10)
	if a.cid == unix.VMADDR_CID_ANY {
		cid = "any"
	}
	return cid + ":" + strconv.FormatUint(uint64(a.port), 10)
}

// vsockPortAny asks bind for a free port.
const vsockPortAny = unix.VMADDR_PORT_ANY

// localVsockCID returns the guest's CID as the vsock device dev reports
// it, or an error if there is no device or no guest transport.
func localVsockCID(dev string) (uint32, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("vsock: %w", err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("vsock: %w", err)
	}
	var cid uint32
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		cid, ierr = unix.IoctlGetUint32(int(fd), unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
	}); err != nil {
		return 0, fmt.Errorf("vsock: %w", err)
	}
	if ierr != nil {
		return 0, fmt.Errorf("vsock: %s: get local CID: %w", dev, ierr)
	}
	if cid == unix.VMADDR_CID_ANY || cid <= unix.VMADDR_CID_HOST {
		return 0, fmt.Errorf("vsock: %s: %w", dev, errNoGuestVsock)
	}
	return cid, nil
}

// errNoGuestVsock says the vsock device has no guest transport (a guest's
// CID is above 2).
var errNoGuestVsock = errors.New("no vsock device to the host")
