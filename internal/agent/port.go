package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// findPort returns the device node (in devDir) of the virtio-serial port
// whose sysfs name file (sysDir/*/name) says name.
func findPort(sysDir, devDir, name string) (string, error) {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("find port %s: %w", name, err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("find port %s: no such virtio port in %s", name, sysDir)
}

// servePort serves the protocol over a virtio-serial port until ctx is done
// or the port fails. While no host is connected, a read from such a port
// returns EOF at once (and writes block); servePort then waits
// RetryInterval and serves again, so a host that reconnects is answered.
func servePort(ctx context.Context, port io.ReadWriter, token []byte, opts Options) error {
	opts = opts.withDefaults()
	s := newServer(port, token, opts) // its decoder is reusable after EOF
	for first := true; ; first = false {
		s.received = false
		err := s.serve(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !isDisconnect(err) {
			return err
		}
		switch {
		case s.received:
			opts.Logger.Info("host disconnected, waiting for it")
		case first:
			opts.Logger.Info("waiting for host")
		}
		if err := sleep(ctx, opts.RetryInterval); err != nil {
			return err
		}
	}
}

// isDisconnect reports whether err means the host end is not connected:
// EOF on a virtio-serial port, also a reset on a socket.
func isDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
