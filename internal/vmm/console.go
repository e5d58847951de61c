package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// ConsoleReader is the host end of a guest's serial console, opened by
// OpenConsole. Reads block until the guest writes; SetReadDeadline bounds
// them (to drain what is left after the VM exited).
type ConsoleReader interface {
	io.ReadCloser
	SetReadDeadline(t time.Time) error
}

// OpenConsole opens the host end of the guest's serial console named by
// Handle.ConsoleStream, through which the daemon reads what the guest
// writes there: a Unix socket the VMM listens on (QEMU; one reader at a
// time, and what the guest writes while none is connected is discarded),
// or a FIFO the VMM writes without blocking (Firecracker; what the pipe
// cannot take is dropped). Either way the VMM never stores the console
// itself and never waits for the daemon, so a VM outlives a daemon that
// stops reading, and a new daemon opens it again.
//
// A FIFO is opened for reading and writing, so the open never blocks and
// reads never see an end of file while no VMM holds it.
func OpenConsole(ctx context.Context, h Handle) (ConsoleReader, error) {
	if h.ConsoleStream == "" {
		return nil, errors.New("open console: the vm's handle names no console stream")
	}
	fi, err := os.Stat(h.ConsoleStream)
	if err != nil {
		return nil, fmt.Errorf("open console: %w", err)
	}
	switch fi.Mode().Type() {
	case os.ModeSocket:
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", h.ConsoleStream)
		if err != nil {
			return nil, fmt.Errorf("open console: %w", err)
		}
		// Output only, but the write side stays open: QEMU takes an end
		// of file from its client for a disconnect.
		return c.(*net.UnixConn), nil
	case os.ModeNamedPipe:
		// O_NONBLOCK makes the file pollable, so deadlines work.
		f, err := os.OpenFile(h.ConsoleStream, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open console: %w", err)
		}
		return f, nil
	default:
		return nil, fmt.Errorf("open console: %s is neither a socket nor a FIFO", h.ConsoleStream)
	}
}
