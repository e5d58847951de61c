package viewer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// CloseReason is the WebSocket close code and text a viewer is closed with.
type CloseReason struct {
	Code websocket.StatusCode
	Text string
}

// Close reasons sent to the browser. Codes 4000–4999 are hearth's own.
var (
	ReasonVMDestroyed    = CloseReason{4000, "vm destroyed"}
	ReasonTokenExpired   = CloseReason{4001, "token expired"}
	ReasonIdle           = CloseReason{4002, "idle timeout"}
	ReasonVNCUnreachable = CloseReason{4003, "guest vnc unreachable"}
	ReasonMaxLifetime    = CloseReason{4004, "max lifetime reached"}
	ReasonVNCClosed      = CloseReason{4005, "guest vnc closed"}
	ReasonPingTimeout    = CloseReason{4006, "keepalive timeout"}
	ReasonInvalidToken   = CloseReason{4007, "invalid token"}
	ReasonViewOnly       = CloseReason{4008, "unsupported input in view-only mode"}
	ReasonViewOnlyGuest  = CloseReason{4008, "guest vnc handshake unsupported in view-only mode"}
	ReasonVMFailed       = CloseReason{4009, "vm failed"}
	ReasonLoginEnded     = CloseReason{4010, "login ended"}
	ReasonLinkFull       = CloseReason{4011, "too many viewers on this link"}
	ReasonVMFull         = CloseReason{4012, "too many viewers on this vm"}
	ReasonRevoked        = CloseReason{4013, "viewer links revoked"}
	ReasonSocketExpired  = CloseReason{4014, "socket token expired"}
	ReasonBusy           = CloseReason{websocket.StatusTryAgainLater, "server busy: try again later"}
	ReasonShutdown       = CloseReason{websocket.StatusGoingAway, "server shutting down"}
	ReasonClientClosed   = CloseReason{websocket.StatusNormalClosure, "viewer closed"}
	ReasonBinaryOnly     = CloseReason{websocket.StatusUnsupportedData, "binary messages only"}
	ReasonInternal       = CloseReason{websocket.StatusInternalError, "internal error"}
)

// Defaults for zero Options fields.
const (
	DefaultBufferSize     = 128 << 10
	DefaultMaxMessageSize = 1 << 20
)

// Options tunes a bridge. Zero durations disable the corresponding check.
type Options struct {
	// PingInterval is how often the server pings the browser; a pong that
	// does not arrive within PingTimeout (default PingInterval) closes the
	// viewer with ReasonPingTimeout.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// IdleTimeout closes the viewer with ReasonIdle after this long without
	// data in either direction (pings do not count).
	IdleTimeout time.Duration
	// MaxLifetime closes the viewer with ReasonMaxLifetime this long after
	// the bridge started, whatever the traffic.
	MaxLifetime time.Duration
	// Expires, if set, closes the viewer with ReasonTokenExpired at that
	// time: a viewer lives no longer than the token that opened it.
	Expires time.Time
	// ViewOnly drops the client's input (key, pointer, cut text and guest
	// control messages), following the RFB handshake in both directions.
	ViewOnly bool
	// BufferSize is the size of the TCP read buffer; each chunk read is
	// sent as one binary message. Default DefaultBufferSize.
	BufferSize int
	// MaxMessageSize bounds a browser message. Default DefaultMaxMessageSize.
	MaxMessageSize int64
	// Closer, if set, lets the caller close the running bridge with a
	// chosen reason (e.g. ReasonVMDestroyed).
	Closer *Closer
}

// withDefaults fills zero fields.
func (o Options) withDefaults() Options {
	if o.PingTimeout <= 0 {
		o.PingTimeout = o.PingInterval
	}
	if o.BufferSize <= 0 {
		o.BufferSize = DefaultBufferSize
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	return o
}

// Closer closes a running bridge with a reason. The first Close wins; it is
// safe to call from any goroutine, before or during the bridge.
type Closer struct {
	once   sync.Once
	done   chan struct{}
	reason CloseReason
}

// NewCloser returns an open Closer.
func NewCloser() *Closer {
	return &Closer{done: make(chan struct{})}
}

// Close asks the bridge to close the viewer with r.
func (c *Closer) Close(r CloseReason) {
	c.once.Do(func() {
		c.reason = r
		close(c.done)
	})
}

// Done returns the channel closed by Close; nil (never ready) for a nil
// Closer.
func (c *Closer) Done() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.done
}

// Reason is the reason Close was given; valid once Done is closed.
func (c *Closer) Reason() CloseReason {
	<-c.done
	return c.reason
}

// end is why one side of the bridge stopped.
type end struct {
	reason CloseReason
	err    error
}

// bridge is one running WebSocket↔VNC bridge.
type bridge struct {
	ws       *websocket.Conn
	vnc      net.Conn
	opts     Options
	lastData atomic.Int64 // UnixNano of the last data either way
	ends     chan end     // one slot per goroutine: sends never block
	filter   *inputFilter // view-only: sees both directions; nil otherwise
}

// Bridge copies binary WebSocket messages to vnc and vnc's bytes back as
// binary messages until either side ends, ctx is cancelled (ReasonShutdown),
// opts.Closer is closed or a timeout in opts fires. The browser is always
// sent a close frame with the reason, vnc is closed, and every goroutine
// has ended when Bridge returns. err is nil when the bridge ended by
// decision (caller, timeout, shutdown, browser close) and describes the
// failure otherwise.
func Bridge(ctx context.Context, ws *websocket.Conn, vnc net.Conn, opts Options) (CloseReason, error) {
	b := &bridge{ws: ws, vnc: vnc, opts: opts.withDefaults(), ends: make(chan end, 3)}
	if b.opts.ViewOnly {
		b.filter = &inputFilter{}
	}
	b.touch()
	ws.SetReadLimit(b.opts.MaxMessageSize)

	// The copy goroutines use their own context: cancelling a context
	// passed to a websocket read or write drops the connection without a
	// close frame, so they stop by the conns being closed instead.
	ioCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { b.ends <- b.browserToVNC(ioCtx) })
	wg.Go(func() { b.ends <- b.vncToBrowser(ioCtx) })
	if b.opts.PingInterval > 0 {
		wg.Go(func() { b.ends <- b.keepalive(ioCtx) })
	}

	e := b.wait(ctx)
	b.close(e.reason)
	cancel()
	wg.Wait()
	return e.reason, e.err
}

// touch records data activity.
func (b *bridge) touch() { b.lastData.Store(time.Now().UnixNano()) }

// wait returns the first reason to end the bridge.
func (b *bridge) wait(ctx context.Context) end {
	idle, stopIdle := timerFor(b.opts.IdleTimeout)
	defer stopIdle()
	life, stopLife := timerFor(b.opts.MaxLifetime)
	defer stopLife()
	var untilExpiry time.Duration
	if !b.opts.Expires.IsZero() {
		// At least a nanosecond: an already expired token still fires.
		untilExpiry = max(time.Until(b.opts.Expires), 1)
	}
	expiry, stopExpiry := timerFor(untilExpiry)
	defer stopExpiry()
	for {
		select {
		case e := <-b.ends:
			return e
		case <-b.opts.Closer.Done():
			return end{reason: b.opts.Closer.reason}
		case <-ctx.Done():
			return end{reason: ReasonShutdown}
		case <-life.C:
			return end{reason: ReasonMaxLifetime}
		case <-expiry.C:
			return end{reason: ReasonTokenExpired}
		case <-idle.C:
			last := time.Unix(0, b.lastData.Load())
			left := time.Until(last.Add(b.opts.IdleTimeout))
			if left <= 0 {
				return end{reason: ReasonIdle}
			}
			idle.Reset(left)
		}
	}
}

// timerFor returns a timer firing after d, or one that never fires if d is
// not positive, and its stop function.
func timerFor(d time.Duration) (*time.Timer, func()) {
	if d <= 0 {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t, func() {}
	}
	t := time.NewTimer(d)
	return t, func() { t.Stop() }
}

// close stops both sides: vnc first, so no more data queues behind the
// close frame, then the WebSocket with r (the handshake is bounded by the
// websocket library's own timeouts).
func (b *bridge) close(r CloseReason) {
	_ = b.vnc.Close()
	_ = b.ws.Close(r.Code, r.Text)
}

// browserToVNC copies browser messages to vnc, one message at a time.
func (b *bridge) browserToVNC(ctx context.Context) end {
	for {
		typ, p, err := b.ws.Read(ctx)
		if err != nil {
			return browserEnd(err)
		}
		if typ != websocket.MessageBinary {
			return end{reason: ReasonBinaryOnly}
		}
		b.touch()
		if b.filter != nil {
			if p, err = b.filter.Filter(p); err != nil {
				return end{reason: ReasonViewOnly, err: fmt.Errorf("filter viewer input: %w", err)}
			}
		}
		if _, err := b.vnc.Write(p); err != nil {
			return end{reason: ReasonVNCClosed, err: fmt.Errorf("write to guest vnc: %w", err)}
		}
	}
}

// browserEnd classifies a failed browser read.
func browserEnd(err error) end {
	if websocket.CloseStatus(err) != -1 {
		return end{reason: ReasonClientClosed}
	}
	return end{reason: ReasonInternal, err: fmt.Errorf("read from viewer: %w", err)}
}

// vncToBrowser sends each chunk read from vnc as one binary message.
func (b *bridge) vncToBrowser(ctx context.Context) end {
	buf := make([]byte, b.opts.BufferSize)
	for {
		n, err := b.vnc.Read(buf)
		if n > 0 {
			b.touch()
			if b.filter != nil {
				// Before the browser sees them, so its answer is read
				// in the state they set.
				if ferr := b.filter.Server(buf[:n]); ferr != nil {
					return end{reason: ReasonViewOnlyGuest, err: fmt.Errorf("follow guest vnc handshake: %w", ferr)}
				}
			}
			if werr := b.ws.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				return browserEnd(werr)
			}
		}
		if errors.Is(err, io.EOF) {
			return end{reason: ReasonVNCClosed}
		}
		if err != nil {
			return end{reason: ReasonVNCClosed, err: fmt.Errorf("read from guest vnc: %w", err)}
		}
	}
}

// keepalive pings the browser every PingInterval until a pong is late.
func (b *bridge) keepalive(ctx context.Context) end {
	if err := Keepalive(ctx, b.ws, b.opts.PingInterval, b.opts.PingTimeout); err != nil {
		return end{reason: ReasonPingTimeout, err: err}
	}
	return end{reason: ReasonShutdown}
}

// ErrPongLate is a keepalive ping that got no pong in time.
var ErrPongLate = errors.New("websocket peer did not answer a ping in time")

// Keepalive pings ws every interval until ctx is done or the connection
// is gone, and returns nil then (whoever reads ws reports why it ended);
// a pong that does not arrive within timeout ends it with an error
// wrapping ErrPongLate. Browsers answer pings by themselves, so an idle
// socket stays open through proxies that close silent ones.
func Keepalive(ctx context.Context, ws *websocket.Conn, interval, timeout time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := ws.Ping(pctx)
		late := errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		if late {
			return fmt.Errorf("ping: %w: %w", ErrPongLate, err)
		}
		if err != nil {
			// The connection is gone (the peer closed it, or the
			// bridge is ending): the reader reports why.
			<-ctx.Done()
			return nil
		}
	}
}
