package viewer

import (
	"bufio"
	"context"
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

	"github.com/hearth-project/hearth/test/rfbtest"
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
	si, err := rfbtest.Handshake(c)
	return si.Width, si.Height, err
}

// requestUpdate asks for a full 16×16 update and reads the raw
// FramebufferUpdate (32 bits per pixel) that answers it.
func requestUpdate(c io.ReadWriter) error {
	if err := rfbtest.RequestUpdate(c, 0, 0, 16, 16); err != nil {
		return err
	}
	_, err := rfbtest.ReadUpdate(c, 4, io.Discard)
	return err
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
