package vmm

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
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
