package fctest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// firstHostPort is the first host-side port Firecracker's vsock muxer
// assigns to a host-initiated connection (2^30; Firecracker's docs show
// "OK 1073741824").
const firstHostPort = 1 << 30

// maxConnectLine bounds "CONNECT <port>\n".
const maxConnectLine = 32

// vsockDev is the host side of a hybrid vsock device: a Unix socket that
// takes "CONNECT <port>\n" and forwards the connection to the guest's
// listener on that port.
type vsockDev struct {
	s        *Server
	path     string
	ln       *net.UnixListener
	nextPort atomic.Uint32
	closing  chan struct{}
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// newVsock binds and listens on path, as Firecracker does when it creates
// the device; an existing file there is an error.
func (s *Server) newVsock(path string) (*vsockDev, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	d := &vsockDev{s: s, path: path, ln: ln, closing: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	d.nextPort.Store(firstHostPort - 1)
	d.wg.Add(1)
	go d.accept()
	return d, nil
}

func (d *vsockDev) accept() {
	defer d.wg.Done()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		if !d.track(c) {
			c.Close()
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer d.untrack(c)
			d.serve(c)
		}()
	}
}

func (d *vsockDev) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.closing:
		return false
	default:
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *vsockDev) untrack(c net.Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
	c.Close()
}

// serve handles one host-initiated connection.
func (d *vsockDev) serve(c net.Conn) {
	port, err := readConnect(c)
	if err != nil {
		return // Firecracker drops a connection with a bad command
	}
	// The device does nothing until the guest runs: Firecracker only
	// processes it when the VM is booted and not paused.
	if !d.waitRunning() {
		return
	}
	guest, err := net.Dial("unix", d.s.GuestSocket(port))
	if err != nil {
		return // nothing listens on the guest port: closed, no answer
	}
	if !d.track(guest) {
		guest.Close()
		return
	}
	defer d.untrack(guest)
	if _, err := fmt.Fprintf(c, "OK %d\n", d.nextPort.Add(1)); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src) // until either side hangs up
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(guest, c)
	go pipe(c, guest)
	<-done
	<-done
}

// readConnect reads "CONNECT <port>\n" one byte at a time, so nothing the
// host sends after it is consumed.
func readConnect(c net.Conn) (uint32, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) > maxConnectLine {
			return 0, errors.New("connect command too long")
		}
	}
	rest, ok := strings.CutPrefix(string(line), "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("bad connect command %q", line)
	}
	port, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad connect command %q", line)
	}
	return uint32(port), nil
}

// waitRunning blocks until the VM runs, or reports false when the device
// is closed first.
func (d *vsockDev) waitRunning() bool {
	for {
		if d.s.running.Load() {
			return true
		}
		select {
		case <-d.closing:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// close stops listening and ends every connection. The socket file stays,
// as Firecracker leaves it.
func (d *vsockDev) close() {
	d.mu.Lock()
	select {
	case <-d.closing:
		d.mu.Unlock()
		return
	default:
	}
	close(d.closing)
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	d.ln.Close()
	d.wg.Wait()
}
