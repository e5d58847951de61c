package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/agent/procs"
	"github.com/hearth-project/hearth/internal/agent/workfs"
	"github.com/hearth-project/hearth/internal/workapi"
)

// The data channel carries the work API (internal/workapi): after the
// preamble proves the VM's token, HTTP/2 with prior knowledge, the agent
// serving. It is the virtio-serial port workapi.PortName when the control
// channel is a port, vsock port workapi.VsockPort when the control channel
// is vsock, or what Options.DataListen says. Processes belong to the
// agent, not to a connection: a host that reconnects finds them running.

const (
	// dataMaxStreams bounds the requests one host connection has open.
	dataMaxStreams = 256
	// dataMaxReadFrame is the largest HTTP/2 frame the agent reads: the
	// protocol's minimum. A new host's challenge, read by the HTTP/2
	// server of a connection the guest did not see end, then fails at
	// once: its first bytes ("\nHE") read as a frame of 673861 bytes,
	// which a larger limit (the default is 1 MiB) would wait for. It also
	// bounds what a frame cut short by a vanished host makes the next
	// host's challenges fill before they are read as such.
	dataMaxReadFrame = 16 << 10
	// dataPreambleTimeout bounds the preamble of a connection accepted
	// on a listener (a virtio-serial port waits as long as it takes).
	dataPreambleTimeout = 30 * time.Second
)

// workMux builds the work API's routes.
func workMux(m *procs.Manager) http.Handler {
	mux := http.NewServeMux()
	procs.Register(mux, m)
	// Files act as the same users processes run as.
	users := m.Users()
	workfs.Register(mux, func(name string) (workfs.Cred, error) {
		u, err := users.Lookup(name)
		if err != nil {
			return workfs.Cred{}, err
		}
		return workfs.Cred{Name: u.Name, UID: u.UID, GID: u.GID, Groups: u.Groups, Home: u.Home}, nil
	}, workfs.Options{})
	return routeErrorsJSON(mux)
}

// routeErrorsJSON answers requests that match no route (404, or 405 with
// Allow) with an ErrorBody, as every other error is answered.
func routeErrorsJSON(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: w.Header(), status: http.StatusNotFound}
		h.ServeHTTP(rec, r) // sets Allow on a 405
		w.Header().Del("Content-Type")
		w.Header().Del("X-Content-Type-Options")
		b, _ := json.Marshal(workapi.ErrorBody{Error: fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, strings.ToLower(http.StatusText(rec.status)))})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.status)
		_, _ = w.Write(append(b, '\n'))
	})
}

// statusRecorder keeps a response's status and drops its body.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }
func (r *statusRecorder) Write(p []byte) (int, error) { return len(p), nil }

// dataChannel returns the data channel to serve alongside control
// channel ch, and whether there is one.
func dataChannel(ch channel, opts Options) (channel, bool, error) {
	if opts.DataListen != "" {
		c, err := parseDataListen(opts.DataListen)
		return c, err == nil, err
	}
	switch ch.network {
	case "":
		return channel{}, true, nil
	case "vsock":
		return channel{network: "vsock", port: workapi.VsockPort}, true, nil
	}
	return channel{}, false, nil // a Unix-socket agent outside a VM
}

// parseDataListen parses Options.DataListen: as Options.Listen, "vsock"
// alone meaning workapi.VsockPort.
func parseDataListen(s string) (channel, error) {
	if s == "vsock" {
		return channel{network: "vsock", port: workapi.VsockPort}, nil
	}
	return parseListen(s)
}

// dataServer serves the work API on host connections.
type dataServer struct {
	opts    Options
	log     *slog.Logger
	handler http.Handler
	h2      *http2.Server
	// open opens the virtio-serial port (openPort; tests fake it).
	open func() (net.Conn, error)
	// sources are the token sources, narrowed as the control channel's
	// are once one has given the token (see serveListener).
	mu      sync.Mutex
	sources []string
}

func newDataServer(opts Options, handler http.Handler) *dataServer {
	s := &dataServer{
		opts: opts, log: opts.Logger.With("channel", "data"), handler: handler, sources: opts.TokenSources,
		// No idle timeout: the host keeps its connection for as long as
		// the VM runs.
		h2: &http2.Server{MaxConcurrentStreams: dataMaxStreams, MaxReadFrameSize: dataMaxReadFrame},
	}
	s.open = s.openPort
	return s
}

// run serves the data channel ch until ctx is done, retrying every
// second while the channel cannot be opened. It returns early only for a
// token source that exists but holds no valid token.
func (s *dataServer) run(ctx context.Context, ch channel) error {
	if ch.network == "" {
		return s.runPort(ctx)
	}
	var lastErr string
	for {
		l, err := openListener(ch)
		if err == nil {
			s.log.Info("data channel listening", "addr", ch)
			err = s.serveListener(ctx, l)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.As(err, new(tokenError)) {
			return err
		}
		if msg := err.Error(); msg != lastErr {
			s.log.Warn("data channel listener unavailable, retrying", "err", err)
			lastErr = msg
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return err
		}
	}
}

// token reads the token for a host connection, then narrows the sources
// to the one that gave it (or earlier ones).
func (s *dataServer) token(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	opts := s.opts
	opts.TokenSources = s.sources
	s.mu.Unlock()
	token, src, err := awaitToken(ctx, opts)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.sources = upTo(s.sources, src)
	s.mu.Unlock()
	return token, nil
}

// serveListener accepts host connections on l and serves each until it
// ends, until ctx is done or accepting fails; it closes l. Connections
// are served side by side: an earlier one ends by itself once its host
// has gone.
func (s *dataServer) serveListener(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.serveConn(ctx, c, dataPreambleTimeout); err != nil && ctx.Err() == nil {
				s.log.Warn("host connection failed", "err", err)
			}
		}()
	}
}

// serveConn proves the token on c (waiting at most timeout for the host's
// challenge, or for ever if zero), then serves HTTP/2 on it until it ends
// or ctx is done. c is closed.
func (s *dataServer) serveConn(ctx context.Context, c net.Conn, timeout time.Duration) error {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	token, err := s.token(ctx)
	if err != nil {
		c.Close()
		return err
	}
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	hc, err := workapi.GuestPreamble(c, token)
	if err != nil {
		c.Close()
		return err
	}
	if timeout > 0 {
		_ = c.SetDeadline(time.Time{})
	}
	s.log.Info("host connected", "remote", c.RemoteAddr())
	s.h2.ServeConn(hc, &http2.ServeConnOpts{Context: ctx, Handler: s.handler})
	return nil
}

// runPort serves the data channel's virtio-serial port. While no host is
// connected a read from it returns EOF at once; the port is read again
// every RetryInterval until a host sends its challenge. HTTP/2 is served
// until the host goes (EOF) or a new host's challenge breaks the
// protocol, which closes the port; it is then opened again.
func (s *dataServer) runPort(ctx context.Context) error {
	var lastErr string
	for {
		err := s.servePort(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.As(err, new(tokenError)) {
			return err
		}
		if err != nil {
			if msg := err.Error(); msg != lastErr {
				s.log.Warn("data channel port unavailable, retrying", "err", err)
				lastErr = msg
			}
			err = sleep(ctx, setupRetryInterval)
		}
		if err != nil {
			return err
		}
	}
}

// openPort opens the data channel's virtio-serial port.
func (s *dataServer) openPort() (net.Conn, error) {
	path, err := findPort(s.opts.portsDir, s.opts.devDir, workapi.PortName)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open data port: %w", err)
	}
	return portConn{File: f}, nil
}

// servePort opens the port and serves one host on it: it returns nil once
// that host has gone, an error if the port cannot be opened or fails.
func (s *dataServer) servePort(ctx context.Context) error {
	c, err := s.open()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	token, err := s.token(ctx)
	if err != nil {
		c.Close()
		return err
	}
	for {
		hc, err := workapi.GuestPreamble(c, token)
		if err == nil {
			s.log.Info("host connected", "port", c.LocalAddr())
			s.h2.ServeConn(hc, &http2.ServeConnOpts{Context: ctx, Handler: s.handler})
			return nil // ServeConn closed the port
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			c.Close()
			return err
		}
		if err := sleep(ctx, s.opts.RetryInterval); err != nil {
			c.Close()
			return err
		}
	}
}

// portConn is a virtio-serial port as a net.Conn: *os.File gives it
// Read, Write, Close and the deadlines.
type portConn struct{ *os.File }

func (c portConn) LocalAddr() net.Addr  { return portAddr(c.Name()) }
func (c portConn) RemoteAddr() net.Addr { return portAddr("host") }

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }
