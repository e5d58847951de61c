package viewer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const (
	screenW = 640
	screenH = 480
)

// startVNC starts Xvfb on a free display and x11vnc on a free loopback port
// serving it, and returns the port's address. Both are killed at cleanup.
func startVNC(t *testing.T) string {
	t.Helper()
	for _, bin := range []string{"Xvfb", "x11vnc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian packages xvfb, x11vnc): %v", bin, err)
		}
	}
	display := startXvfb(t)
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("x11vnc", "-display", display, "-rfbport", port, "-localhost",
		"-noipv6", "-forever", "-shared", "-nopw", "-quiet")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	startCmd(t, cmd)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("x11vnc never listened on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startXvfb starts Xvfb, letting it pick a free display (-displayfd).
func startXvfb(t *testing.T) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-screen", "0",
		fmt.Sprintf("%dx%dx24", screenW, screenH), "-nolisten", "tcp")
	cmd.ExtraFiles = []*os.File{w}
	startCmd(t, cmd)
	w.Close()
	_ = r.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("read Xvfb display number: %v", err)
	}
	return ":" + strings.TrimSpace(line)
}

// startCmd starts cmd and kills and reaps it at cleanup.
func startCmd(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// result is what a bridge returned.
type result struct {
	reason CloseReason
	err    error
}

// bridgeServer is an httptest server that accepts a WebSocket (subprotocol
// "binary", as noVNC uses) and bridges it to vncAddr.
type bridgeServer struct {
	srv     *httptest.Server
	results chan result
}

func newBridgeServer(t *testing.T, ctx context.Context, vncAddr string, opts Options) *bridgeServer {
	t.Helper()
	b := &bridgeServer{results: make(chan result, 1)}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"binary"}})
		if err != nil {
			return
		}
		vnc, err := net.DialTimeout("tcp", vncAddr, 5*time.Second)
		if err != nil {
			_ = ws.Close(ReasonVNCUnreachable.Code, ReasonVNCUnreachable.Text)
			b.results <- result{ReasonVNCUnreachable, err}
			return
		}
		reason, err := Bridge(ctx, ws, vnc, opts)
		b.results <- result{reason, err}
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// dial opens a browser-like WebSocket to the server.
func (b *bridgeServer) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(b.srv.URL, "http"),
		&websocket.DialOptions{Subprotocols: []string{"binary"}})
	if err != nil {
		t.Fatal(err)
	}
	if ws.Subprotocol() != "binary" {
		t.Fatalf("subprotocol = %q, want binary", ws.Subprotocol())
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

// result waits for the bridge to return.
func (b *bridgeServer) result(t *testing.T) result {
	t.Helper()
	select {
	case r := <-b.results:
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("bridge did not return")
		return result{}
	}
}

// rfbHandshake performs an RFB 3.8 handshake with security None over c and
// returns the framebuffer size from ServerInit.
func rfbHandshake(c io.ReadWriter) (w, h uint16, err error) {
	ver := make([]byte, 12)
	if _, err := io.ReadFull(c, ver); err != nil {
		return 0, 0, fmt.Errorf("read version: %w", err)
	}
	if !strings.HasPrefix(string(ver), "RFB 003.") {
		return 0, 0, fmt.Errorf("server version %q", ver)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return 0, 0, err
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil || n[0] == 0 {
		return 0, 0, fmt.Errorf("read security types: %d %v", n[0], err)
	}
	types := make([]byte, n[0])
	if _, err := io.ReadFull(c, types); err != nil {
		return 0, 0, err
	}
	if !strings.ContainsRune(string(types), 1) {
		return 0, 0, fmt.Errorf("security None not offered: %v", types)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return 0, 0, err
	}
	var res uint32
	if err := binary.Read(c, binary.BigEndian, &res); err != nil || res != 0 {
		return 0, 0, fmt.Errorf("security result %d: %v", res, err)
	}
	if _, err := c.Write([]byte{1}); err != nil { // ClientInit, shared
		return 0, 0, err
	}
	var init struct {
		W, H    uint16
		Pixel   [16]byte
		NameLen uint32
	}
	if err := binary.Read(c, binary.BigEndian, &init); err != nil {
		return 0, 0, fmt.Errorf("read ServerInit: %w", err)
	}
	if _, err := io.CopyN(io.Discard, c, int64(init.NameLen)); err != nil {
		return 0, 0, err
	}
	return init.W, init.H, nil
}

// requestUpdate asks for a full 16×16 update and reads the raw
// FramebufferUpdate that answers it.
func requestUpdate(c io.ReadWriter) error {
	req := []byte{3, 0, 0, 0, 0, 0, 0, 16, 0, 16}
	if _, err := c.Write(req); err != nil {
		return err
	}
	// The server may send other messages first (x11vnc sends the
	// clipboard, ServerCutText, when it changes): skip them.
	var typ [1]byte
	for {
		if _, err := io.ReadFull(c, typ[:]); err != nil {
			return fmt.Errorf("read message type: %w", err)
		}
		if typ[0] == 0 { // FramebufferUpdate
			break
		}
		if err := skipServerMessage(c, typ[0]); err != nil {
			return err
		}
	}
	var hdr struct {
		_     uint8
		Rects uint16
	}
	if err := binary.Read(c, binary.BigEndian, &hdr); err != nil {
		return fmt.Errorf("read update header: %w", err)
	}
	if hdr.Rects == 0 {
		return fmt.Errorf("FramebufferUpdate with no rectangles")
	}
	for range hdr.Rects {
		var r struct {
			X, Y, W, H uint16
			Encoding   int32
		}
		if err := binary.Read(c, binary.BigEndian, &r); err != nil {
			return err
		}
		if r.Encoding != 0 {
			return fmt.Errorf("rect encoding %d, want raw", r.Encoding)
		}
		if _, err := io.CopyN(io.Discard, c, int64(r.W)*int64(r.H)*4); err != nil {
			return fmt.Errorf("read pixels: %w", err)
		}
	}
	return nil
}

// skipServerMessage reads past a server message other than
// FramebufferUpdate (RFC 6143 §7.6).
func skipServerMessage(c io.Reader, typ byte) error {
	switch typ {
	case 1: // SetColourMapEntries
		var h struct {
			_      uint8
			First  uint16
			Colors uint16
		}
		if err := binary.Read(c, binary.BigEndian, &h); err != nil {
			return err
		}
		_, err := io.CopyN(io.Discard, c, int64(h.Colors)*6)
		return err
	case 2: // Bell
		return nil
	case 3: // ServerCutText
		var h struct {
			_   [3]uint8
			Len uint32
		}
		if err := binary.Read(c, binary.BigEndian, &h); err != nil {
			return err
		}
		if h.Len > 1<<20 {
			return fmt.Errorf("ServerCutText of %d bytes", h.Len)
		}
		_, err := io.CopyN(io.Discard, c, int64(h.Len))
		return err
	default:
		return fmt.Errorf("unexpected server message type %d", typ)
	}
}

// closeOf reads from ws until it fails and returns the close frame.
func closeOf(t *testing.T, ws *websocket.Conn, within time.Duration) websocket.CloseError {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		_, _, err := ws.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		return ce
	}
}

// echoServer is a loopback TCP server standing in for a VNC server: it
// echoes what it reads and records it.
func echoServer(t *testing.T) (addr string, got <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan []byte, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						ch <- append([]byte(nil), buf[:n]...)
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}
