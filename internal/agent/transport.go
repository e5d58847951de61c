package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// channel is the agent's way to the host: the virtio-serial port (network
// ""), or a listener on a vsock port or a Unix socket.
type channel struct {
	network string // "", "vsock" or "unix"
	port    uint32 // of vsock
	path    string // of unix
}

func (c channel) String() string {
	switch c.network {
	case "vsock":
		return "vsock:" + strconv.FormatUint(uint64(c.port), 10)
	case "unix":
		return "unix:" + c.path
	}
	return "virtio-serial"
}

// parseListen parses Options.Listen: "vsock:PORT" ("vsock" alone means
// agentapi.VsockPort) or "unix:PATH".
func parseListen(s string) (channel, error) {
	network, addr, _ := strings.Cut(s, ":")
	switch network {
	case "vsock":
		if addr == "" && !strings.Contains(s, ":") {
			return channel{network: network, port: agentapi.VsockPort}, nil
		}
		port, err := strconv.ParseUint(addr, 10, 32)
		if err != nil || port == vsockPortAny {
			return channel{}, fmt.Errorf("invalid listen address %q: want vsock:PORT, PORT below %d", s, uint32(vsockPortAny))
		}
		return channel{network: network, port: uint32(port)}, nil
	case "unix":
		if addr == "" {
			return channel{}, fmt.Errorf("invalid listen address %q: want unix:PATH", s)
		}
		return channel{network: network, path: addr}, nil
	}
	return channel{}, fmt.Errorf("invalid listen address %q: want vsock:PORT or unix:PATH", s)
}

// awaitChannel returns the channel opts ask for, or else finds the one the
// guest has, checking every second while it has none.
func awaitChannel(ctx context.Context, opts Options) (channel, error) {
	if opts.Listen != "" {
		return parseListen(opts.Listen)
	}
	if opts.Port != "" {
		return channel{}, nil
	}
	logged := false
	for {
		ch, err := detectChannel(opts)
		if err == nil {
			opts.Logger.Info("agent channel found", "channel", ch)
			return ch, nil
		}
		if !logged {
			opts.Logger.Warn("no agent channel yet, waiting", "err", err)
			logged = true
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return channel{}, err
		}
	}
}

// detectChannel returns the virtio-serial port if the guest has it, else
// vsock on agentapi.VsockPort if the guest has a vsock device: /dev/vsock
// that reports a guest CID (the node exists as soon as the vsock core is
// loaded, even with no device to talk through).
func detectChannel(opts Options) (channel, error) {
	_, perr := findPort(opts.portsDir, opts.devDir, PortName)
	if perr == nil {
		return channel{}, nil
	}
	_, verr := localVsockCID(opts.vsockDev)
	if verr == nil {
		return channel{network: "vsock", port: agentapi.VsockPort}, nil
	}
	return channel{}, fmt.Errorf("%w; %w", perr, verr)
}

// openListener opens the listener of ch. A Unix socket left by an earlier run is
// replaced.
func openListener(ch channel) (net.Listener, error) {
	if ch.network == "vsock" {
		return listenVsock(ch.port)
	}
	if fi, err := os.Lstat(ch.path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		os.Remove(ch.path)
	}
	return net.Listen("unix", ch.path)
}

// runListener listens on ch and serves the host connections it accepts
// until ctx is done. A listener that cannot be opened or fails is retried
// every second.
func runListener(ctx context.Context, ch channel, opts Options) error {
	if opts.TokenSources == nil {
		opts.TokenSources = VsockTokenSources
	}
	var lastErr string
	for {
		l, err := openListener(ch)
		if err == nil {
			opts.Logger.Info("agent listening", "addr", ch)
			err = serveListener(ctx, l, &opts)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.As(err, new(tokenError)) {
			return err
		}
		if msg := err.Error(); msg != lastErr {
			opts.Logger.Warn("agent listener unavailable, retrying", "err", err)
			lastErr = msg
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return err
		}
	}
}

// serveListener accepts host connections on l and serves one at a time
// until ctx is done, accepting fails, or a token source is unusable; it
// closes l. A new connection replaces the one being served, as when a
// host reconnects to a virtio-serial port: the old connection is closed,
// its session ended and its requests cancelled, and their replies never
// reach the new one. Each connection is served like a virtio-serial port
// (server.serve), with the token read afresh for it.
//
// Once a source has given the token, later connections read it from that
// source or an earlier one only, never from a later fallback: after a
// snapshot restore, MMDS is empty until the host fills it in, while a
// token file restored with the guest's memory still holds the old token.
// serveListener narrows opts.TokenSources to say so, for as long as the
// agent runs.
func serveListener(ctx context.Context, l net.Listener, opts *Options) error {
	conns := make(chan net.Conn)
	acceptErr := make(chan error, 1)
	quit := make(chan struct{})
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := l.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			select {
			case conns <- c:
			case <-quit:
				c.Close()
				return
			}
		}
	}()
	stopClose := context.AfterFunc(ctx, func() { l.Close() })
	var cur *hostConn // nil while no host is connected
	defer func() {
		stopClose()
		close(quit)
		l.Close()
		<-accepting
		if cur != nil {
			cur.stop()
		}
	}()

	for {
		var done <-chan connResult
		if cur != nil {
			done = cur.done
		}
		select {
		case c := <-conns:
			if cur != nil {
				opts.Logger.Info("host reconnected, closing its previous connection")
				opts.TokenSources = upTo(opts.TokenSources, cur.stop().source)
			}
			opts.Logger.Info("host connected", "remote", c.RemoteAddr())
			cur = startHostConn(ctx, c, *opts)
		case r := <-done:
			cur = nil
			opts.TokenSources = upTo(opts.TokenSources, r.source)
			switch err := r.err; {
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.As(err, new(tokenError)):
				return err
			case isDisconnect(err) || errors.Is(err, net.ErrClosed):
				opts.Logger.Info("host disconnected, waiting for it")
			default:
				opts.Logger.Warn("host connection failed, waiting for the host", "err", err)
			}
		case err := <-acceptErr:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept: %w", err)
		}
	}
}

// upTo returns sources up to and including src, or all of them if src is
// not one.
func upTo(sources []string, src string) []string {
	if i := slices.Index(sources, src); i >= 0 {
		return sources[:i+1]
	}
	return sources
}

// hostConn is one host connection being served.
type hostConn struct {
	cancel context.CancelFunc
	done   chan connResult
}

// connResult is how serving a connection ended, and where its token came
// from ("" if it was not read).
type connResult struct {
	source string
	err    error
}

func startHostConn(ctx context.Context, c net.Conn, opts Options) *hostConn {
	cctx, cancel := context.WithCancel(ctx)
	h := &hostConn{cancel: cancel, done: make(chan connResult, 1)}
	go func() {
		src, err := serveConn(cctx, c, opts)
		h.done <- connResult{source: src, err: err}
	}()
	return h
}

// stop ends the connection and waits until it is no longer served.
func (h *hostConn) stop() connResult {
	h.cancel()
	return <-h.done
}

// serveConn reads the token, then serves c until it ends or ctx is done;
// it closes c. It returns the token's source and why serving ended.
func serveConn(ctx context.Context, c net.Conn, opts Options) (source string, err error) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // unblocks I/O when replaced
	defer stop()
	token, src, err := awaitToken(ctx, opts)
	if err != nil {
		return "", err
	}
	return src, newServer(c, token, opts).serve(ctx)
}
