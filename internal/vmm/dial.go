package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// dialRetryInterval is how often DialAgent and DialData retry while the
// VMM's socket or the guest's listener is not there yet.
const dialRetryInterval = 50 * time.Millisecond

// maxVsockReply bounds the "OK <port>\n" line Firecracker answers with.
const maxVsockReply = 32

// ErrNoDataChannel is DialData's error for a handle that names no data
// channel: its VM was started by an older hearth, whose drivers gave VMs
// none.
var ErrNoDataChannel = errors.New("the vm was started by an older hearth and has no data channel: restart it to use processes and files")

// DialAgent connects to the guest agent of h: a plain Unix socket stream
// (QEMU's virtio-serial chardev) or, when h.AgentVsockPort is set, a
// Firecracker vsock device's Unix socket after its CONNECT handshake. The
// socket may not exist yet while the VMM starts, and the guest may not
// listen yet while it boots (Firecracker then closes the connection without
// an answer), so DialAgent retries until it is connected or ctx is done.
func DialAgent(ctx context.Context, h Handle) (net.Conn, error) {
	return dial(ctx, "agent", h.AgentSocket, h.AgentVsockPort)
}

// DialData connects to the data channel of h's guest, where the agent
// serves the work API (the caller goes on with workapi.HostPreamble): as
// DialAgent, on h.DataSocket and h.DataVsockPort, retrying until the
// socket and the guest's listener are there or ctx is done. A handle with
// no data channel fails at once with ErrNoDataChannel.
func DialData(ctx context.Context, h Handle) (net.Conn, error) {
	if h.DataSocket == "" {
		return nil, fmt.Errorf("dial data channel: %w", ErrNoDataChannel)
	}
	return dial(ctx, "data channel", h.DataSocket, h.DataVsockPort)
}

// dial connects to a guest stream whose host end is the Unix socket path
// (after "CONNECT <vsockPort>" if that is set), retrying until ctx is done.
// what names the stream in errors.
func dial(ctx context.Context, what, path string, vsockPort uint32) (net.Conn, error) {
	var lastErr error
	for {
		conn, err := dialOnce(ctx, path, vsockPort)
		if err == nil {
			return conn, nil
		}
		lastErr = err
		t := time.NewTimer(dialRetryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dial %s at %s: %w (last error: %v)", what, path, ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

func dialOnce(ctx context.Context, path string, vsockPort uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil || vsockPort == 0 {
		return conn, err
	}
	if err := VsockConnect(ctx, conn, vsockPort); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// VsockConnect performs the host side of Firecracker's vsock handshake on
// conn, a fresh connection to the device's Unix socket: it sends
// "CONNECT <port>\n" and reads the "OK <host port>\n" answer one byte at a
// time, so nothing the guest sends after it is consumed.
func VsockConnect(ctx context.Context, conn net.Conn, port uint32) error {
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	// The connection is the caller's from here; a deadline that cannot be
	// cleared shows up on its first read.
	defer func() { _ = conn.SetDeadline(time.Time{}) }()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("vsock connect to port %d: %w", port, err)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := conn.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > maxVsockReply {
				return fmt.Errorf("vsock connect to port %d: answer too long: %q", port, line)
			}
			continue
		}
		if err != nil {
			if len(line) == 0 {
				// Firecracker closes the connection when nothing
				// listens on the guest port (yet).
				return fmt.Errorf("vsock connect to port %d: closed without an answer (no listener in the guest?): %w", port, err)
			}
			return fmt.Errorf("vsock connect to port %d: partial answer %q: %w", port, line, err)
		}
	}
	return parseVsockOK(string(line), port)
}

func parseVsockOK(line string, port uint32) error {
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return fmt.Errorf("vsock connect to port %d: unexpected answer %q", port, line)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("vsock connect to port %d: unexpected answer %q", port, line)
	}
	return nil
}

// ErrNoCapability is returned by optional driver features a driver or host
// lacks (see Capabilities).
var ErrNoCapability = errors.New("not supported by this driver")
