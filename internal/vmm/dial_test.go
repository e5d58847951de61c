package vmm

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// vsockDevice plays the host side of a Firecracker vsock device on a Unix
// socket: for every connection it reads "CONNECT <port>\n" and answers as
// answer says ("" closes the connection, as Firecracker does when nothing
// listens in the guest); after an OK it echoes what it reads.
func vsockDevice(t *testing.T, answer func(port string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.vsock")
	ln, err := net.Listen("unix", path)
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
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				port, _ := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
				a := answer(port)
				if a == "" {
					return
				}
				c.Write([]byte(a))
				if strings.HasPrefix(a, "OK ") && strings.HasSuffix(a, "\n") {
					buf := make([]byte, 64)
					for {
						n, err := c.Read(buf)
						if err != nil {
							return
						}
						c.Write(buf[:n])
					}
				}
			}()
		}
	}()
	return path
}

func TestDialAgentVsock(t *testing.T) {
	path := vsockDevice(t, func(port string) string {
		if port == "1024" {
			return "OK 1073741824\n"
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialAgent(ctx, Handle{AgentSocket: path, AgentVsockPort: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Nothing after the OK line was consumed: the stream is the guest's.
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream after the handshake: %q %v", buf, err)
	}
}

func TestVsockConnectRefusals(t *testing.T) {
	for name, c := range map[string]struct{ answer, want string }{
		"no listener": {"", "closed without an answer"},
		"garbage":     {"NO\n", `unexpected answer "NO"`},
		"bad port":    {"OK port\n", `unexpected answer "OK port"`},
		"too long":    {strings.Repeat("x", 100) + "\n", "answer too long"},
		"partial":     {"OK 12", `partial answer "OK 12"`},
	} {
		t.Run(name, func(t *testing.T) {
			path := vsockDevice(t, func(string) string { return c.answer })
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			err = VsockConnect(context.Background(), conn, 1024)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestDialAgentGivesUpWithTheLastError(t *testing.T) {
	path := vsockDevice(t, func(string) string { return "" })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := DialAgent(ctx, Handle{AgentSocket: path, AgentVsockPort: 1024})
	if err == nil || !strings.Contains(err.Error(), "no listener in the guest") {
		t.Fatalf("dial to a guest that never listens: %v", err)
	}
}

func TestDialDataUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The control channel's socket is elsewhere: DialData must not use it.
	c, err := DialData(ctx, Handle{AgentSocket: filepath.Join(t.TempDir(), "agent.sock"), DataSocket: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := <-accepted
	defer srv.Close()
	// A plain stream: what the host writes first reaches the guest as is.
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "first" {
		t.Fatalf("guest end read %q %v; want the host's bytes with no handshake before them", buf, err)
	}
}

func TestDialDataVsockRetriesUntilTheGuestListens(t *testing.T) {
	var refused atomic.Int32
	path := vsockDevice(t, func(port string) string {
		if port != "1025" {
			return "NO\n"
		}
		// The guest's data listener is not up for the first attempts.
		if refused.Add(1) <= 3 {
			return ""
		}
		return "OK 1073741825\n"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialData(ctx, Handle{AgentSocket: path, AgentVsockPort: 1024, DataSocket: path, DataVsockPort: 1025})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := refused.Load(); n != 4 {
		t.Fatalf("DialData connected on attempt %d; want the 4th, after three without a listener", n)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("stream after the handshake: %q %v", buf, err)
	}
}

func TestDialDataOfAnOlderHandle(t *testing.T) {
	// A handle stored by a hearth whose drivers gave VMs no data channel.
	h, err := UnmarshalHandle([]byte(`{"driver":"qemu","dir":"/vms/a","pid":1,"agent_socket":"/vms/a/agent.sock",` +
		`"control_socket":"/vms/a/qmp.sock","disk_path":"/vms/a/disk.qcow2","token_path":"/vms/a/token"}`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = DialData(ctx, h)
	if !errors.Is(err, ErrNoDataChannel) {
		t.Fatalf("DialData of an older handle: %v; want ErrNoDataChannel", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("DialData of an older handle took %v; want an error at once", took)
	}
	for _, want := range []string{"older hearth", "restart"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestDialDataGivesUpWithTheLastError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	path := filepath.Join(t.TempDir(), "data.sock") // never created
	_, err := DialData(ctx, Handle{DataSocket: path})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "data channel at "+path) {
		t.Fatalf("dial of a socket that never appears: %v", err)
	}
}

func TestHandleRoundTripKeepsTheDataChannel(t *testing.T) {
	h := Handle{Driver: "firecracker", AgentSocket: "/v/agent.vsock", AgentVsockPort: 1024,
		DataSocket: "/v/agent.vsock", DataVsockPort: 1025}
	got, err := UnmarshalHandle(h.Marshal())
	if err != nil || got != h {
		t.Fatalf("round trip: %+v %v; want %+v", got, err, h)
	}
}
