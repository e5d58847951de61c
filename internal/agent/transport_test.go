package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in   string
		want channel
		ok   bool
	}{
		{"vsock:1024", channel{network: "vsock", port: 1024}, true},
		{"vsock:52", channel{network: "vsock", port: 52}, true},
		{"vsock", channel{network: "vsock", port: agentapi.VsockPort}, true},
		{"unix:/run/x/vsock-1024.sock", channel{network: "unix", path: "/run/x/vsock-1024.sock"}, true},
		{"unix:rel:with:colons", channel{network: "unix", path: "rel:with:colons"}, true},
		{"vsock:", channel{}, false},
		{"vsock:-1", channel{}, false},
		{"vsock:4294967295", channel{}, false}, // VMADDR_PORT_ANY
		{"vsock:4294967296", channel{}, false},
		{"vsock:x", channel{}, false},
		{"unix:", channel{}, false},
		{"unix", channel{}, false},
		{"tcp:127.0.0.1:1", channel{}, false},
		{"/path", channel{}, false},
	}
	for _, tt := range tests {
		got, err := parseListen(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseListen(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestOptionsCheck(t *testing.T) {
	for _, o := range []Options{
		{Port: "/dev/vport0p1", Listen: "vsock:1024"},
		{Listen: "tcp:1"},
		{MMDSURL: "ftp://x"},
		{TokenSources: []string{"mmds:nope"}},
	} {
		if err := Run(context.Background(), o); err == nil || !strings.HasPrefix(err.Error(), "agent: ") {
			t.Errorf("Run(%+v) = %v, want an error at once", o, err)
		}
	}
}

// fakeSysPort makes a virtio-serial port named name in a fake sysfs and
// /dev, returning both directories.
func fakeSysPort(t *testing.T, name string) (sys, dev string) {
	t.Helper()
	sys, dev = t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "vport1p1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sys, "vport1p1", "name"), []byte(name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return sys, dev
}

func TestDetectChannel(t *testing.T) {
	token := newToken(t)
	opts, _ := testOptions(t, token)
	opts = opts.withDefaults()

	opts.portsDir, opts.devDir = fakeSysPort(t, PortName)
	if ch, err := detectChannel(opts); err != nil || ch.network != "" {
		t.Fatalf("with a port: %v, %v", ch, err)
	}

	opts.portsDir, opts.devDir = fakeSysPort(t, "org.qemu.guest_agent.0")
	_, err := detectChannel(opts)
	if err == nil || !strings.Contains(err.Error(), "no such virtio port") || !strings.Contains(err.Error(), "no-vsock") {
		t.Fatalf("with neither: %v", err)
	}

	// A file that is no vsock device.
	opts.vsockDev = filepath.Join(opts.devDir, "vsock")
	if err := os.WriteFile(opts.vsockDev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := detectChannel(opts); err == nil {
		t.Fatal("a plain file taken for a vsock device")
	}

	// This machine's own vsock device, if it has one with a guest CID.
	opts.vsockDev = defaultVsockDev
	if _, err := localVsockCID(defaultVsockDev); err != nil {
		t.Skipf("no guest vsock device here: %v", err)
	}
	if ch, err := detectChannel(opts); err != nil || ch.String() != "vsock:1024" {
		t.Fatalf("with %s: %v, %v", defaultVsockDev, ch, err)
	}
}

// TestRunWaitsForChannel checks that Run, with neither a port nor a vsock
// device, waits for one to appear.
func TestRunWaitsForChannel(t *testing.T) {
	token := newToken(t)
	opts, logs := testOptions(t, token)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{tokenFile}
	opts.portsDir, opts.devDir = t.TempDir(), t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	logs.waitFor(t, "no agent channel yet")

	// The port's driver has loaded: its device (a plain file here, which
	// reads as an unconnected port) is opened.
	if err := os.WriteFile(filepath.Join(opts.devDir, "vport1p1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(opts.portsDir, "vport1p1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(opts.portsDir, "vport1p1", "name"), []byte(PortName), 0o644); err != nil {
		t.Fatal(err)
	}
	logs.waitFor(t, `"agent channel found" channel=virtio-serial`)
	logs.waitFor(t, "agent port open")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want Canceled", err)
	}
}

// runListenerAgent runs the agent listening on a Unix socket, with its
// token in m, until the test ends, and returns the socket's path.
func runListenerAgent(t *testing.T, opts Options, m *fakeMMDS) (path string, done <-chan error) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hearth") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "vsock-1024.sock")
	opts.Listen = "unix:" + path
	opts.MMDSURL = m.url() // with the default token sources
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ch:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v, want Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run ignored ctx")
		}
	})
	return path, ch
}

// dialAgent connects to the agent's Unix socket, as a fake Firecracker
// forwarding a vsock CONNECT would.
func dialAgent(t *testing.T, path string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := agentapi.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestUnixListener serves hosts over a Unix-socket listener end to end:
// handshake, ping, a reconnect, a connection that replaces another, and a
// token that changes in MMDS between connections (as after a snapshot
// restore), which the next handshake must prove instead of the old one.
func TestUnixListener(t *testing.T) {
	t.Cleanup(checkGoroutines(t)) // runs last, once the agent has stopped
	token1, token2 := newToken(t), newToken(t)
	m := newFakeMMDS(t)
	m.putToken(t, token1)
	opts, logs := testOptions(t, token1)
	t.Cleanup(func() {
		if strings.Contains(logs.String(), agentapi.FormatToken(token2)) {
			t.Errorf("log reveals the token:\n%s", logs)
		}
	})
	path, _ := runListenerAgent(t, opts, m)
	ctx := ctxTimeout(t, 10*time.Second)
	cfg := agentapi.Config{HeartbeatInterval: 20 * time.Millisecond}

	s := connectSession(t, dialAgent(t, path), token1, cfg)
	expectEvent(t, s, agentapi.TypeReady)
	if _, err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	boot := s.Hello().BootTime
	logs.waitFor(t, `"token loaded" source=mmds`)

	// The host reconnects: same token, same guest.
	s.Close()
	logs.waitFor(t, "host disconnected, waiting for it")
	s = connectSession(t, dialAgent(t, path), token1, cfg)
	expectEvent(t, s, agentapi.TypeReady)
	if !s.Hello().BootTime.Equal(boot) {
		t.Fatalf("boot time changed from %v to %v", boot, s.Hello().BootTime)
	}
	s.Close()

	// The VM becomes another one: its token changes in MMDS. The old token
	// no longer passes; the new one does.
	m.putToken(t, token2)
	_, err := agentapi.Handshake(ctx, dialAgent(t, path), token1, cfg)
	if !errors.Is(err, agentapi.ErrBadProof) {
		t.Fatalf("handshake with the old token: %v, want ErrBadProof", err)
	}
	s = connectSession(t, dialAgent(t, path), token2, cfg)
	expectEvent(t, s, agentapi.TypeReady)
	if _, err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// A second connection replaces the first, which the agent closes.
	s2 := connectSession(t, dialAgent(t, path), token2, cfg)
	expectEvent(t, s2, agentapi.TypeReady)
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the replaced connection is still open")
	}
	if _, err := s2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	logs.waitFor(t, "host reconnected, closing its previous connection")
	if n := strings.Count(logs.String(), "token loaded"); n < 5 {
		t.Fatalf("token read %d times for 5 connections", n)
	}
}

// TestUnixListenerWaitsForToken checks that a connection made before MMDS
// has the token waits for it, and that one made meanwhile replaces it.
func TestUnixListenerWaitsForToken(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	opts, logs := testOptions(t, token)
	path, _ := runListenerAgent(t, opts, m)

	early := dialAgent(t, path)
	logs.waitFor(t, "no token yet")
	late := dialAgent(t, path)
	logs.waitFor(t, "host reconnected")
	early.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := early.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read on the replaced connection: %v, want EOF", err)
	}
	m.putToken(t, token)
	s := connectSession(t, late, token, agentapi.Config{})
	expectEvent(t, s, agentapi.TypeReady)
}

// TestUnixListenerBadToken checks that an MMDS token that is no token
// stops the agent, naming the source.
func TestUnixListenerBadToken(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	m.put(t, map[string]any{"hearth": map[string]any{"token": "not-a-token"}})
	opts, _ := testOptions(t, token)
	opts.Listen = "unix:" + filepath.Join(t.TempDir(), "a.sock")
	opts.MMDSURL = m.url()
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), opts) }()
	dialAgent(t, strings.TrimPrefix(opts.Listen, "unix:"))
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "read token from mmds: agentapi: parse token: not hex") {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run goes on with a bad token")
	}
}

// TestUnixListenerStaleSocket checks that a socket file left by an agent
// that died is replaced, and that the socket is removed on exit.
func TestUnixListenerStaleSocket(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	m.putToken(t, token)
	opts, _ := testOptions(t, token)
	dir, err := os.MkdirTemp("", "hearth")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "a.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens

	opts.Listen, opts.MMDSURL = "unix:"+path, m.url()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	s := connectSession(t, dialAgent(t, path), token, agentapi.Config{})
	expectEvent(t, s, agentapi.TypeReady)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// TestListenerKeepsToItsTokenSource checks that once MMDS has given the
// token, a later connection waits for MMDS (empty after a snapshot
// restore, until the host fills it in) rather than taking the old token
// from a fallback file restored with the guest.
func TestListenerKeepsToItsTokenSource(t *testing.T) {
	oldToken, newTok := newToken(t), newToken(t)
	m := newFakeMMDS(t)
	m.putToken(t, oldToken)
	opts, logs := testOptions(t, oldToken)
	stale := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(stale, []byte(agentapi.FormatToken(oldToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{"mmds", stale}
	path, _ := runListenerAgent(t, opts, m)

	s := connectSession(t, dialAgent(t, path), oldToken, agentapi.Config{})
	expectEvent(t, s, agentapi.TypeReady)
	s.Close()
	logs.waitFor(t, "host disconnected")

	// Restored: MMDS is empty, the file still there.
	m.put(t, map[string]any{})
	conn := dialAgent(t, path)
	logs.waitFor(t, "no token yet")
	m.putToken(t, newTok)
	s = connectSession(t, conn, newTok, agentapi.Config{})
	expectEvent(t, s, agentapi.TypeReady)
	if strings.Contains(logs.String(), "source="+stale) {
		t.Fatalf("the stale file was read:\n%s", logs)
	}
	if strings.Contains(logs.String(), agentapi.FormatToken(newTok)) {
		t.Fatalf("log reveals the token:\n%s", logs)
	}
}

func TestUpTo(t *testing.T) {
	all := []string{"mmds", "/run/hearth/token", "cmdline:/proc/cmdline"}
	for src, want := range map[string]int{"mmds": 1, "/run/hearth/token": 2, "cmdline:/proc/cmdline": 3, "": 3, "other": 3} {
		if got := upTo(all, src); len(got) != want {
			t.Errorf("upTo(%q) = %q", src, got)
		}
	}
}
