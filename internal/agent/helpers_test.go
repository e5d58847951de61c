package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// logBuffer collects a guest's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the log contains s.
func (b *logBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	b.waitForN(t, s, 1)
}

// waitForN waits until the log contains s at least n times.
func (b *logBuffer) waitForN(t *testing.T, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(b.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", s, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newToken(t *testing.T) []byte {
	t.Helper()
	tok, err := agentapi.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// testOptions returns guest options logging to a buffer, which is checked
// at cleanup never to contain the token.
func testOptions(t *testing.T, token []byte) (Options, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	t.Cleanup(func() {
		if strings.Contains(logs.String(), agentapi.FormatToken(token)) {
			t.Errorf("log reveals the token:\n%s", logs.String())
		}
	})
	opts := Options{
		Version:  "test-1",
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		PowerOff: func() error { t.Error("unexpected power off"); return nil },
		// Never the test machine's network: a fake netOps, and an MMDS
		// client that reaches loopback only.
		netOps:   newFakeNet(),
		mmdsDial: loopbackDial(),
		vsockDev: filepath.Join(t.TempDir(), "no-vsock"),
	}
	return opts, logs
}

// loopbackDial refuses to connect anywhere but loopback addresses.
func loopbackDial() dialFunc {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("test client: refusing to dial %s: only loopback", addr)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// transport makes a connected host/guest pair of streams.
type transport struct {
	name    string
	connect func(t *testing.T) (host, guest net.Conn)
}

var transports = []transport{
	{"pipe", func(t *testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
	{"unix", unixPair},
}

// unixPair connects through a real Unix socket, with the host dialling as
// it does for a QEMU chardev socket.
func unixPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hearth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	host, err = agentapi.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	guest, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return host, guest
}

// guest is a running Serve.
type guest struct {
	done chan struct{}
	err  error
}

// startGuest runs Serve on conn until the test ends.
func startGuest(t *testing.T, conn net.Conn, token []byte, opts Options) *guest {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g := &guest{done: make(chan struct{})}
	go func() {
		defer close(g.done)
		g.err = Serve(ctx, conn, token, opts)
	}()
	t.Cleanup(func() {
		cancel()
		g.wait(t)
		conn.Close()
	})
	return g
}

// wait waits for Serve to return and returns its error.
func (g *guest) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-g.done:
		return g.err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// connectSession handshakes with the guest through conn.
func connectSession(t *testing.T, conn net.Conn, token []byte, cfg agentapi.Config) *agentapi.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := agentapi.Handshake(ctx, conn, token, cfg)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// nextEvent returns the session's next event, failing after 5s.
func nextEvent(t *testing.T, s *agentapi.Session) agentapi.Event {
	t.Helper()
	select {
	case ev, ok := <-s.Events():
		if !ok {
			t.Fatalf("session ended: %v", s.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return agentapi.Event{}
}

// expectEvent returns the next event, which must be of type typ.
func expectEvent(t *testing.T, s *agentapi.Session, typ string) agentapi.Event {
	t.Helper()
	ev := nextEvent(t, s)
	if ev.Type != typ {
		t.Fatalf("got %s event %+v, want %s", ev.Type, ev, typ)
	}
	return ev
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freeAddr returns a 127.0.0.1:PORT that nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", itoa(freePort(t)))
}

// listen listens on 127.0.0.1:port until the test ends.
func listen(t *testing.T, port int) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// listenAny listens on a free port until the test ends and returns it.
func listenAny(t *testing.T) int {
	t.Helper()
	port := freePort(t)
	listen(t, port)
	return port
}

// checkGoroutines returns a function that fails t if more goroutines run
// than when checkGoroutines was called (waiting a while for them to exit).
func checkGoroutines(t *testing.T) func() {
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// rawHost drives the guest with hand-written messages.
type rawHost struct {
	t   *testing.T
	enc *agentapi.Encoder
	dec *agentapi.Decoder
	w   io.Writer
}

func newRawHost(t *testing.T, conn net.Conn) *rawHost {
	return &rawHost{t: t, enc: agentapi.NewEncoder(conn), dec: agentapi.NewDecoder(conn), w: conn}
}

func (h *rawHost) send(typ string, id uint64, body any) {
	h.t.Helper()
	env, err := agentapi.NewMessage(typ, id, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.enc.Encode(env); err != nil {
		h.t.Fatalf("host send %s: %v", typ, err)
	}
}

// next returns the next message of type typ, skipping heartbeats etc.
func (h *rawHost) next(typ string) agentapi.Envelope {
	h.t.Helper()
	for {
		env, err := h.dec.Decode()
		if err != nil {
			h.t.Fatalf("host waiting for %s: %v", typ, err)
		}
		if env.Type == typ {
			return env
		}
	}
}

// handshake runs challenge, hello and config by hand.
func (h *rawHost) handshake(token []byte, cfg agentapi.Config) {
	h.t.Helper()
	nonce := bytes.Repeat([]byte{7}, agentapi.NonceSize)
	h.challenge(nonce)
	var hello agentapi.Hello
	if err := h.next(agentapi.TypeHello).DecodeBody(&hello); err != nil {
		h.t.Fatal(err)
	}
	if hello.Proof != agentapi.Proof(token, nonce) {
		h.t.Fatal("bad proof")
	}
	h.send(agentapi.TypeConfig, 0, cfg)
}

func (h *rawHost) challenge(nonce []byte) {
	h.t.Helper()
	h.send(agentapi.TypeChallenge, 0, agentapi.Challenge{
		Protocol: agentapi.ProtocolVersion, Nonce: b64(nonce),
	})
}

// request sends a request and returns its result.
func (h *rawHost) request(typ string, id uint64) agentapi.Envelope {
	h.t.Helper()
	h.send(typ, id, struct{}{})
	res := h.next(agentapi.TypeResult)
	if res.ID != id {
		h.t.Fatalf("result id %d, want %d", res.ID, id)
	}
	return res
}

func itoa(n int) string { return strconv.Itoa(n) }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
