package viewer

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/test/rfbtest"
)

// rfbConn is a browser-side RFB byte stream over ws. Like a browser, it
// never stops reading the WebSocket (so pings are answered however long
// the test is idle): a goroutine moves every message into an unbounded
// buffer that Read drains.
type rfbConn struct {
	io.Writer
	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	err  error
}

func newRFBConn(t *testing.T, ws *websocket.Conn) *rfbConn {
	t.Helper()
	nc := websocket.NetConn(t.Context(), ws, websocket.MessageBinary)
	c := &rfbConn{Writer: nc}
	c.cond = sync.NewCond(&c.mu)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := make([]byte, 64<<10)
		for {
			n, err := nc.Read(p)
			c.mu.Lock()
			c.buf = append(c.buf, p[:n]...)
			if err != nil {
				c.err = err
			}
			c.cond.Broadcast()
			c.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		ws.CloseNow()
		<-done
	})
	return c
}

// Read returns buffered bytes, waiting for some; at the end it returns the
// connection's error (io.EOF for a normal or going-away close).
func (c *rfbConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.buf) == 0 && c.err == nil {
		c.cond.Wait()
	}
	if len(c.buf) == 0 {
		return 0, c.err
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func TestBridgeRFBHandshake(t *testing.T) {
	vnc := startVNC(t)
	for _, viewOnly := range []bool{false, true} {
		srv := newBridgeServer(t, t.Context(), vnc, Options{PingInterval: time.Second, ViewOnly: viewOnly})
		ws := srv.dial(t)
		c := newRFBConn(t, ws)
		w, h, err := rfbHandshake(c)
		if err != nil {
			t.Fatalf("view-only %v: %v", viewOnly, err)
		}
		if w != screenW || h != screenH {
			t.Fatalf("ServerInit size %dx%d, want %dx%d", w, h, screenW, screenH)
		}
		if viewOnly { // input is dropped without breaking the stream
			if _, err := c.Write([]byte{4, 1, 0, 0, 0, 0, 0, 0x61, 5, 1, 0, 10, 0, 20}); err != nil {
				t.Fatal(err)
			}
		}
		if err := requestUpdate(c); err != nil {
			t.Fatalf("view-only %v: %v", viewOnly, err)
		}
		if err := ws.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			t.Fatal(err)
		}
		if r := srv.result(t); r.reason != ReasonClientClosed || r.err != nil {
			t.Fatalf("bridge ended with %v, %v", r.reason, r.err)
		}
	}
}

// scriptedVNC serves s on loopback until the test ends.
func scriptedVNC(t *testing.T, s *rfbtest.Server) string {
	t.Helper()
	if s.Messages == nil {
		s.Messages = make(chan rfbtest.Message, 256)
	}
	ln, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// endOf waits for the viewer's stream to end and returns the close code.
func endOf(t *testing.T, c *rfbConn) websocket.StatusCode {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(c)
		done <- err
	}()
	select {
	case err := <-done:
		return websocket.CloseStatus(err)
	case <-time.After(15 * time.Second):
		t.Fatal("viewer never ended")
		return 0
	}
}

// A view-only client's input never reaches the server; everything else
// does, intact, however the browser splits it into messages.
func TestBridgeViewOnlyDropsInput(t *testing.T) {
	s := &rfbtest.Server{Version: "RFB 003.008\n", Width: 16, Height: 16}
	srv := newBridgeServer(t, t.Context(), scriptedVNC(t, s), Options{ViewOnly: true})
	c := newRFBConn(t, srv.dial(t))
	if _, err := rfbtest.Handshake(c); err != nil {
		t.Fatal(err)
	}
	var in []byte
	var want [][]byte
	for _, st := range messages() {
		in = append(in, st.client...)
		if len(st.want) > 0 {
			want = append(want, st.want)
		}
	}
	for p := in; len(p) > 0; { // uneven message boundaries
		n := min(7, len(p))
		if _, err := c.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	for i, w := range want {
		select {
		case m := <-s.Messages:
			if !bytes.Equal(m.Bytes, w) {
				t.Fatalf("message %d at the server: %v, want %v", i, m.Bytes, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("server received %d of %d messages", i, len(want))
		}
	}
	c.Write([]byte{99}) // unknown message type
	if code := endOf(t, c); code != ReasonViewOnly.Code {
		t.Fatalf("close = %d, want %v", code, ReasonViewOnly)
	}
	if r := srv.result(t); r.reason != ReasonViewOnly {
		t.Fatalf("bridge ended with %v", r.reason)
	}
}

// A view-only client of an RFB 3.3 server, the client also saying 3.3:
// the server chose the security type, and input is still dropped.
func TestBridgeViewOnlyRFB33(t *testing.T) {
	s := &rfbtest.Server{Version: "RFB 003.003\n", Minor: 3, Width: 16, Height: 16}
	srv := newBridgeServer(t, t.Context(), scriptedVNC(t, s), Options{ViewOnly: true})
	c := newRFBConn(t, srv.dial(t))
	buf := make([]byte, 24)
	if _, err := io.ReadFull(c, buf[:12]); err != nil || string(buf[:12]) != "RFB 003.003\n" {
		t.Fatalf("version %q %v", buf[:12], err)
	}
	c.Write([]byte("RFB 003.003\n"))
	if _, err := io.ReadFull(c, buf[:4]); err != nil || !bytes.Equal(buf[:4], []byte{0, 0, 0, 1}) {
		t.Fatalf("security %v %v", buf[:4], err)
	}
	c.Write([]byte{1}) // ClientInit
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("ServerInit: %v", err)
	}
	fur := []byte{3, 0, 0, 0, 0, 0, 0, 16, 0, 16}
	c.Write(append([]byte{4, 1, 0, 0, 0, 0, 0, 0x61}, fur...))
	c.Write(append([]byte{5, 1, 0, 10, 0, 20}, fur...))
	for i := range 2 {
		select {
		case m := <-s.Messages:
			if !bytes.Equal(m.Bytes, fur) {
				t.Fatalf("message %d at the server: %v, want only update requests", i, m.Bytes)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("server received %d of 2 update requests", i)
		}
	}
}

// The view-only filter follows the version and security the server chose,
// not the client's claim. A client that claims 3.8 to a server running
// 3.3 would otherwise be one byte out of step with it: its "ClientInit"
// is the server's first message type, so a byte the filter passes as
// ClientInit arrives as a KeyEvent, its body taken from an update request.
func TestBridgeViewOnlyFollowsTheServer(t *testing.T) {
	for name, s := range map[string]*rfbtest.Server{
		"3.3 server":                 {Version: "RFB 003.003\n", Minor: 3},
		"3.8 server that speaks 3.3": {Version: "RFB 003.008\n", Minor: 3},
	} {
		t.Run(name, func(t *testing.T) {
			s.Width, s.Height = 16, 16
			srv := newBridgeServer(t, t.Context(), scriptedVNC(t, s), Options{ViewOnly: true})
			c := newRFBConn(t, srv.dial(t))
			ver := make([]byte, 12)
			if _, err := io.ReadFull(c, ver); err != nil {
				t.Fatal(err)
			}
			// Each step follows the server as a real client would; a
			// bridge that refuses ends the stream and the rest is moot.
			c.Write([]byte("RFB 003.008\n"))
			io.ReadFull(c, make([]byte, 4)) // the 3.3 security type (None)
			c.Write([]byte{1})              // the filter's security None; the server's ClientInit
			io.ReadFull(c, make([]byte, 24))
			c.Write([]byte{4}) // the filter's ClientInit; the server's KeyEvent
			// An update request to the filter; to the server, the
			// KeyEvent's body: pressed, key 0x61 ('a').
			c.Write([]byte{3, 1, 0, 0, 0, 0, 0x61, 0x10, 0, 0x10})
			c.Write([]byte{5, 1, 0, 10, 0, 20}) // a pointer event, to be dropped
			select {
			case m := <-s.Messages:
				t.Fatalf("the server received message %v from a view-only viewer", m.Bytes)
			case r := <-srv.results:
				if r.reason.Code != ReasonViewOnly.Code {
					t.Fatalf("bridge ended with %v, %v; want %v", r.reason, r.err, ReasonViewOnly)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("bridge neither refused the client nor passed its bytes")
			}
			for {
				select {
				case m := <-s.Messages:
					if m.Input() {
						t.Fatalf("input %v reached the server", m.Bytes)
					}
				default:
					return
				}
			}
		})
	}
}

func TestBridgeKeepalive(t *testing.T) {
	keepalive(t, 3*time.Second)
}

// TestBridgeKeepaliveLong idles three minutes with the daemon's default
// keepalive (a ping every 20 s): the old system dropped every viewer
// 30–60 s in. It runs in parallel with the other tests; -short skips it.
func TestBridgeKeepaliveLong(t *testing.T) {
	if testing.Short() {
		t.Skip("three-minute idle test")
	}
	t.Parallel()
	keepaliveEvery(t, 3*time.Minute, 20*time.Second)
}

// keepalive checks that a pinged, idle viewer stays usable for idle.
func keepalive(t *testing.T, idle time.Duration) {
	keepaliveEvery(t, idle, 200*time.Millisecond)
}

func keepaliveEvery(t *testing.T, idle, ping time.Duration) {
	vnc := startVNC(t)
	srv := newBridgeServer(t, t.Context(), vnc, Options{PingInterval: ping, IdleTimeout: 30 * time.Minute})
	c := newRFBConn(t, srv.dial(t))
	if _, _, err := rfbHandshake(c); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-srv.results:
		t.Fatalf("bridge ended while idle: %v, %v", r.reason, r.err)
	case <-time.After(idle):
	}
	if err := requestUpdate(c); err != nil {
		t.Fatalf("after %v idle: %v", idle, err)
	}
}

func TestBridgePingTimeout(t *testing.T) {
	addr, _ := echoServer(t)
	srv := newBridgeServer(t, t.Context(), addr, Options{PingInterval: 100 * time.Millisecond, PingTimeout: 200 * time.Millisecond})
	ws := srv.dial(t)
	time.Sleep(600 * time.Millisecond) // not reading: pongs are never sent
	if ce := closeOf(t, ws, 10*time.Second); ce.Code != ReasonPingTimeout.Code || ce.Reason != ReasonPingTimeout.Text {
		t.Fatalf("close = %v, want %v", ce, ReasonPingTimeout)
	}
	if r := srv.result(t); r.reason != ReasonPingTimeout || r.err == nil {
		t.Fatalf("bridge ended with %v, %v", r.reason, r.err)
	}
}

func TestBridgeIdleTimeout(t *testing.T) {
	addr, _ := echoServer(t)
	srv := newBridgeServer(t, t.Context(), addr, Options{PingInterval: 50 * time.Millisecond, PingTimeout: time.Second, IdleTimeout: 300 * time.Millisecond})
	ws := srv.dial(t)
	start := time.Now()
	for range 6 { // traffic keeps it open past the idle timeout
		if err := ws.Write(t.Context(), websocket.MessageBinary, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, p, err := ws.Read(t.Context()); err != nil || string(p) != "x" {
			t.Fatalf("echo = %q, %v", p, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ce := closeOf(t, ws, 5*time.Second)
	if ce.Code != 4002 || ce.Reason != "idle timeout" {
		t.Fatalf("close = %v, want 4002 idle timeout", ce)
	}
	if time.Since(start) < 800*time.Millisecond {
		t.Fatal("closed while there was traffic")
	}
	if r := srv.result(t); r.reason != ReasonIdle || r.err != nil {
		t.Fatalf("bridge ended with %v, %v", r.reason, r.err)
	}
}

func TestBridgeCloseReasons(t *testing.T) {
	addr, _ := echoServer(t)
	tests := []struct {
		name string
		want CloseReason
		opts func(*Options)
		act  func(cancel context.CancelFunc, c *Closer)
	}{
		{"vm destroyed", ReasonVMDestroyed, nil, func(_ context.CancelFunc, c *Closer) { c.Close(ReasonVMDestroyed) }},
		{"shutdown", ReasonShutdown, nil, func(cancel context.CancelFunc, _ *Closer) { cancel() }},
		{"max lifetime", ReasonMaxLifetime, func(o *Options) { o.MaxLifetime = 200 * time.Millisecond }, nil},
		{"token expires mid-session", ReasonTokenExpired, func(o *Options) { o.Expires = time.Now().Add(300 * time.Millisecond) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			opts := Options{Closer: NewCloser(), PingInterval: 100 * time.Millisecond}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			srv := newBridgeServer(t, ctx, addr, opts)
			ws := srv.dial(t)
			if tt.act != nil {
				time.AfterFunc(100*time.Millisecond, func() { tt.act(cancel, opts.Closer) })
			}
			ce := closeOf(t, ws, 5*time.Second)
			if ce.Code != tt.want.Code || ce.Reason != tt.want.Text {
				t.Fatalf("close = %v, want %v", ce, tt.want)
			}
			if r := srv.result(t); r.reason != tt.want || r.err != nil {
				t.Fatalf("bridge ended with %v, %v", r.reason, r.err)
			}
		})
	}
}

func TestBridgeVNCGone(t *testing.T) {
	a := newAcceptCounter(t) // accepts and hangs up at once
	srv := newBridgeServer(t, t.Context(), a.ln.Addr().String(), Options{})
	ws := srv.dial(t)
	if ce := closeOf(t, ws, 5*time.Second); ce.Code != ReasonVNCClosed.Code {
		t.Fatalf("close = %v, want %v", ce, ReasonVNCClosed)
	}
	srv.result(t)
}

func TestBridgeTextMessageRefused(t *testing.T) {
	addr, _ := echoServer(t)
	srv := newBridgeServer(t, t.Context(), addr, Options{})
	ws := srv.dial(t)
	ws.Write(t.Context(), websocket.MessageText, []byte("hi"))
	if ce := closeOf(t, ws, 5*time.Second); ce.Code != websocket.StatusUnsupportedData {
		t.Fatalf("close = %v, want 1003", ce)
	}
	srv.result(t)
}

func TestBridgeNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		addr, _ := echoServer(t)
		for _, reason := range []CloseReason{ReasonVMDestroyed, ReasonClientClosed} {
			closer := NewCloser()
			srv := newBridgeServer(t, t.Context(), addr, Options{Closer: closer, PingInterval: 20 * time.Millisecond, IdleTimeout: time.Minute})
			ws := srv.dial(t)
			for range 20 {
				ws.Write(t.Context(), websocket.MessageBinary, []byte("ping"))
				ws.Read(t.Context())
			}
			if reason == ReasonClientClosed {
				ws.Close(websocket.StatusNormalClosure, "")
			} else {
				closer.Close(reason)
				closeOf(t, ws, 5*time.Second)
			}
			if r := srv.result(t); r.reason != reason {
				t.Fatalf("bridge ended with %v, want %v", r.reason, reason)
			}
			ws.CloseNow()
			srv.srv.Close()
		}
	}()
	// The echo listener closes at cleanup; allow for its goroutine.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamServer sends data to every connection, then waits for the peer.
func streamServer(t *testing.T, data []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Write(data); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// A large stream arrives intact and in order, in frames over 64 KiB too,
// with pings interleaved.
func TestBridgeLargeStreamIntact(t *testing.T) {
	data := make([]byte, 24<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	addr := streamServer(t, data)
	{
		// Pings interleave with the data frames: the framing must survive them.
		srv := newBridgeServer(t, t.Context(), addr, Options{PingInterval: 20 * time.Millisecond, PingTimeout: 10 * time.Second})
		ws := srv.dial(t)
		ws.SetReadLimit(1 << 24)
		got := make([]byte, 0, len(data))
		sizes := map[string]bool{}
		for len(got) < len(data) {
			typ, p, err := ws.Read(t.Context())
			if err != nil {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			if typ != websocket.MessageBinary {
				t.Fatalf("message type %v", typ)
			}
			switch {
			case len(p) <= 125:
				sizes["small"] = true
			case len(p) <= 0xffff:
				sizes["16-bit"] = true
			default:
				sizes["64-bit"] = true
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("stream differs")
		}
		if !sizes["64-bit"] {
			t.Fatalf("no frame over 64 KiB (sizes %v)", sizes)
		}
		ws.Close(websocket.StatusNormalClosure, "")
		if r := srv.result(t); r.reason != ReasonClientClosed {
			t.Fatalf("bridge ended with %v, %v", r.reason, r.err)
		}
	}
}
