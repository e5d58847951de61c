// Package httplimit bounds what HTTP clients can hold on the daemon. A
// Limiter counts the connections a server holds, overall and per client
// address; when a cap is reached it makes room by closing the connection
// that has been idle longest (one that never sent a request, or a
// keep-alive connection between requests), and refuses the new one only
// when every held connection is busy. So a flood of idle connections from
// one address, even the address an administrator uses, never locks out a
// request. Config builds the http.Server with the timeouts that cut idle
// and slow clients.
package httplimit

import (
	"container/list"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Config is everything that bounds a client's hold on the server.
type Config struct {
	// ReadHeaderTimeout bounds reading a request's headers; a connection
	// that sends nothing is closed after it too.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response (see the api package for
	// how long handlers and streams extend it).
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header block.
	MaxHeaderBytes int
	// MaxConns and MaxConnsPerClient cap the connections held at once,
	// overall and per client IP address; 0 means no cap.
	MaxConns          int
	MaxConnsPerClient int
}

// Server returns an http.Server for h with c's timeouts whose
// connections the returned Limiter counts: serve it with
// srv.Serve(lim.Listener(ln)).
func (c Config) Server(h http.Handler, log *slog.Logger) (*http.Server, *Limiter) {
	lim := NewLimiter(c.MaxConns, c.MaxConnsPerClient, log)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    c.MaxHeaderBytes,
		ConnState:         lim.ConnState,
	}, lim
}

// Stats are a Limiter's counters.
type Stats struct {
	Open     int    // connections held now (hijacked ones included)
	Idle     int    // of which idle (evictable)
	Accepted uint64 // connections admitted
	Evicted  uint64 // idle connections closed to make room
	Refused  uint64 // connections refused because every held one was busy
}

// Limiter counts connections and decides which to close at a cap. Use
// Listener to wrap the server's listener and ConnState as the server's
// ConnState hook: a connection is idle from its accept until it sends a
// byte, and again between keep-alive requests; hijacked connections (the
// viewer's WebSocket) stay counted, as busy, until they are closed.
type Limiter struct {
	max, perClient int
	log            *slog.Logger

	mu       sync.Mutex
	total    int
	clients  map[netip.Addr]*client
	idle     list.List // *conn, longest idle first
	stats    Stats
	lastWarn time.Time
}

type client struct {
	n    int
	idle list.List // *conn, longest idle first
}

// NewLimiter caps connections at max overall and perClient per client
// address (0: no cap). log (may be nil) gets a warning, at most once a
// minute, while caps are being hit.
func NewLimiter(max, perClient int, log *slog.Logger) *Limiter {
	return &Limiter{max: max, perClient: perClient, log: log, clients: map[netip.Addr]*client{}}
}

// Stats returns the current counters.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Open, s.Idle = l.total, l.idle.Len()
	return s
}

// conn is a counted connection. Its fields after Conn are guarded by
// lim.mu.
type conn struct {
	net.Conn
	lim      *Limiter
	cl       *client
	addr     netip.Addr
	gEl, cEl *list.Element // in lim.idle and cl.idle while idle
	gone     bool          // no longer counted
}

// Close stops counting c and closes it.
func (c *conn) Close() error {
	c.lim.release(c)
	return c.Conn.Close()
}

// Listener returns ln with every accepted connection counted and caps
// enforced. Refused connections get a short 503 and are closed; Accept
// goes on to the next.
func (l *Limiter) Listener(ln net.Listener) net.Listener { return &listener{Listener: ln, lim: l} }

type listener struct {
	net.Listener
	lim *Limiter
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := ln.lim.admit(c); tc != nil {
			return tc, nil
		}
	}
}

// refusal is what a refused connection reads before it is closed.
var refusal = func() []byte {
	body := `{"error":{"code":"unavailable","message":"too many connections in use; try again in a moment"}}` + "\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n" +
		"Retry-After: 1\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

// admit counts c, first closing the longest-idle connection of its
// client (at the per-client cap) or of anyone (at the overall cap); it
// returns nil, having refused and closed c, if there is none to close.
func (l *Limiter) admit(c net.Conn) *conn {
	addr := clientAddr(c.RemoteAddr())
	var victim *conn
	l.mu.Lock()
	cl := l.clients[addr]
	if cl == nil {
		cl = &client{}
	}
	refuse := false
	switch {
	case l.perClient > 0 && cl.n >= l.perClient:
		if victim = oldest(&cl.idle); victim == nil {
			refuse = true
		}
	case l.max > 0 && l.total >= l.max:
		if victim = oldest(&l.idle); victim == nil {
			refuse = true
		}
	}
	if refuse {
		l.stats.Refused++
		l.warnLocked("refusing connections: every connection held is busy", addr)
		l.mu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.Write(refusal)
		_ = c.Close()
		return nil
	}
	if victim != nil {
		l.stats.Evicted++
		l.dropLocked(victim)
		l.warnLocked("connection cap reached: closing the longest-idle connections", addr)
	}
	l.clients[addr] = cl
	tc := &conn{Conn: c, lim: l, cl: cl, addr: addr}
	cl.n++
	l.total++
	l.stats.Accepted++
	l.setIdleLocked(tc, true) // idle until it sends a byte
	l.mu.Unlock()
	if victim != nil {
		_ = victim.Conn.Close() // its server goroutine sees the error and ends
	}
	return tc
}

func oldest(idle *list.List) *conn {
	if e := idle.Front(); e != nil {
		return e.Value.(*conn)
	}
	return nil
}

// ConnState is the http.Server hook that tells the Limiter which
// connections are idle.
func (l *Limiter) ConnState(nc net.Conn, s http.ConnState) {
	c, ok := nc.(*conn)
	if !ok || c.lim != l {
		return
	}
	switch s {
	case http.StateNew, http.StateIdle:
		l.setIdle(c, true)
	case http.StateActive, http.StateHijacked:
		l.setIdle(c, false)
	case http.StateClosed:
		l.release(c)
	}
}

func (l *Limiter) setIdle(c *conn, idle bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setIdleLocked(c, idle)
}

func (l *Limiter) setIdleLocked(c *conn, idle bool) {
	switch {
	case c.gone:
	case idle && c.gEl == nil:
		c.gEl = l.idle.PushBack(c)
		c.cEl = c.cl.idle.PushBack(c)
	case !idle && c.gEl != nil:
		l.idle.Remove(c.gEl)
		c.cl.idle.Remove(c.cEl)
		c.gEl, c.cEl = nil, nil
	}
}

func (l *Limiter) release(c *conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropLocked(c)
}

// dropLocked stops counting c (once).
func (l *Limiter) dropLocked(c *conn) {
	if c.gone {
		return
	}
	l.setIdleLocked(c, false)
	c.gone = true
	c.cl.n--
	l.total--
	if c.cl.n == 0 && l.clients[c.addr] == c.cl {
		delete(l.clients, c.addr)
	}
}

func (l *Limiter) warnLocked(msg string, addr netip.Addr) {
	if l.log == nil || time.Since(l.lastWarn) < time.Minute {
		return
	}
	l.lastWarn = time.Now()
	l.log.Warn(msg, "client", addr.String(), "open", l.total, "idle", l.idle.Len(),
		"max_connections", l.max, "max_connections_per_client", l.perClient,
		"evicted", l.stats.Evicted, "refused", l.stats.Refused)
}

// clientAddr is the IP address a connection comes from (the zero Addr
// for non-IP connections, which then share one budget).
func clientAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
