package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// fakePort behaves like the guest end of a virtio-serial port: while no
// host is connected, reads return EOF at once and writes block; a host can
// connect, disconnect and connect again.
type fakePort struct {
	mu        sync.Mutex
	conn      net.Conn      // guest end of the current host connection
	connected chan struct{} // closed when a host connects
	closed    chan struct{} // closed by Close
	eofReads  int           // reads answered with EOF while disconnected
}

func newFakePort() *fakePort {
	return &fakePort{connected: make(chan struct{}), closed: make(chan struct{})}
}

// connect attaches a new host and returns its end.
func (p *fakePort) connect() net.Conn {
	host, guest := net.Pipe()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conn = guest
	close(p.connected)
	return host
}

// eofCount returns how many reads have returned EOF while disconnected.
func (p *fakePort) eofCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.eofReads
}

func (p *fakePort) state() (net.Conn, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn, p.connected
}

// drop forgets c, once its host has gone.
func (p *fakePort) drop(c net.Conn) {
	p.mu.Lock()
	if p.conn == c {
		p.conn = nil
		p.connected = make(chan struct{})
	}
	p.mu.Unlock()
	c.Close()
}

func (p *fakePort) Read(b []byte) (int, error) {
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	c, _ := p.state()
	if c == nil {
		p.mu.Lock()
		p.eofReads++
		p.mu.Unlock()
		return 0, io.EOF
	}
	n, err := c.Read(b)
	if err != nil {
		p.drop(c)
		return n, io.EOF
	}
	return n, nil
}

func (p *fakePort) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		c, connected := p.state()
		if c == nil {
			select {
			case <-connected:
				continue
			case <-p.closed:
				return written, net.ErrClosed
			}
		}
		n, err := c.Write(b[written:])
		written += n
		if err != nil {
			p.drop(c) // the rest goes to the next host, as with virtio
		}
	}
	return written, nil
}

func (p *fakePort) Close() error {
	close(p.closed)
	if c, _ := p.state(); c != nil {
		c.Close()
	}
	return nil
}

// TestReconnect checks that the guest waits without spinning while no
// host is connected, and serves every host that connects, again and again.
func TestReconnect(t *testing.T) {
	check := checkGoroutines(t)
	const retry = 20 * time.Millisecond
	token := newToken(t)
	opts, logs := testOptions(t, token)
	opts.RetryInterval = retry
	port := newFakePort()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- servePort(ctx, port, token, opts) }()

	// No host yet: the guest polls, slowly.
	time.Sleep(10 * retry)
	if n := port.eofCount(); n < 2 || n > 15 {
		t.Fatalf("%d reads in %v with retry interval %v", n, 10*retry, retry)
	}

	tcpPort := listenAny(t)
	cfg := agentapi.Config{RequiredPorts: []int{tcpPort}, HeartbeatInterval: 10 * time.Millisecond}
	var boot time.Time
	for i := range 3 {
		s := connectSession(t, port.connect(), token, cfg)
		if i == 0 {
			boot = s.Hello().BootTime
		} else if !s.Hello().BootTime.Equal(boot) {
			t.Fatalf("boot time changed from %v to %v", boot, s.Hello().BootTime)
		}
		if ev := expectEvent(t, s, agentapi.TypePortReady); ev.Port != tcpPort {
			t.Fatalf("port_ready %d, want %d", ev.Port, tcpPort)
		}
		expectEvent(t, s, agentapi.TypeReady)
		expectEvent(t, s, agentapi.TypeHeartbeat)
		if _, err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}

		// The host goes away (e.g. the daemon restarts) while the guest
		// keeps sending heartbeats, which block until the next host.
		s.Close()
		logs.waitForN(t, "host disconnected", i+1)
		time.Sleep(5 * retry)
	}

	cancel()
	port.Close()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("servePort = %v, want Canceled", err)
	}
	check()
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for dev, name := range map[string]string{
		"vport0p1": "org.qemu.guest_agent.0",
		"vport1p1": agentapi.TypeHello, // any other name
		"vport2p3": PortName + "\n",
	} {
		if err := os.MkdirAll(filepath.Join(sys, dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, dev, "name"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(sys, "vport9p9"), 0o755); err != nil { // no name file
		t.Fatal(err)
	}
	got, err := findPort(sys, "/dev", PortName)
	if err != nil || got != "/dev/vport2p3" {
		t.Fatalf("findPort = %q, %v", got, err)
	}
	if _, err := findPort(sys, "/dev", "other"); err == nil {
		t.Fatal("found a port that does not exist")
	}
	if _, err := findPort(filepath.Join(sys, "missing"), "/dev", PortName); err == nil {
		t.Fatal("found a port without sysfs")
	}
}
