package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

func TestHandshakeAndReady(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			opts, _ := testOptions(t, token)
			host, guestConn := tr.connect(t)
			startGuest(t, guestConn, token, opts)
			start := time.Now()

			s := connectSession(t, host, token, agentapi.Config{HeartbeatInterval: time.Hour})
			h := s.Hello()
			wantHost, _ := os.Hostname()
			if h.Protocol != agentapi.ProtocolVersion || h.AgentVersion != "test-1" || h.Hostname != wantHost ||
				h.Kernel == "" || h.Uptime() <= 0 || h.BootTime.After(time.Now()) || h.BootTime.IsZero() {
				t.Errorf("Hello() = %+v", h)
			}
			// No required ports: ready right away, with an empty list.
			ev := expectEvent(t, s, agentapi.TypeReady)
			if len(ev.Ports) != 0 {
				t.Errorf("ready ports %v, want none", ev.Ports)
			}
			if d := ev.At.Sub(start); d > 2*time.Second {
				t.Errorf("ready after %v", d)
			}
		})
	}
}

// A version (or host name) that is not valid UTF-8 does not keep the
// guest from connecting: the hello carries it repaired, within the bound.
func TestHelloInvalidUTF8(t *testing.T) {
	token := newToken(t)
	opts, _ := testOptions(t, token)
	opts.Version = strings.Repeat("\xff", 300)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	s := connectSession(t, host, token, agentapi.Config{HeartbeatInterval: time.Hour})
	if v := s.Hello().AgentVersion; v != "\uFFFD" {
		t.Fatalf("agent version %q", v)
	}
}

func TestBadToken(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			opts, logs := testOptions(t, token)
			host, guestConn := tr.connect(t)
			g := startGuest(t, guestConn, token, opts)

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := agentapi.Handshake(ctx, host, newToken(t), agentapi.Config{})
			if !errors.Is(err, agentapi.ErrBadProof) {
				t.Fatalf("got %v, want ErrBadProof", err)
			}
			logs.waitFor(t, `host rejected agent" reason="bad proof"`)
			// The host closed the stream: the guest sees EOF.
			if err := g.wait(t); !isDisconnect(err) {
				t.Fatalf("Serve = %v, want EOF", err)
			}
		})
	}
}

// TestPortsBecomeReady checks that a port is reported only once it accepts
// connections, and ready only once all are.
func TestPortsBecomeReady(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			opts, _ := testOptions(t, token)
			host, guestConn := tr.connect(t)
			startGuest(t, guestConn, token, opts)

			early := listenAny(t)
			late := freePort(t)
			listenStart := make(chan time.Time, 1)
			time.AfterFunc(300*time.Millisecond, func() {
				listenStart <- time.Now()
				listen(t, late)
			})

			s := connectSession(t, host, token, agentapi.Config{
				RequiredPorts: []int{late, early}, HeartbeatInterval: time.Hour,
			})
			if ev := expectEvent(t, s, agentapi.TypePortReady); ev.Port != early {
				t.Fatalf("first port_ready for %d, want %d", ev.Port, early)
			}
			ev := expectEvent(t, s, agentapi.TypePortReady)
			listened := <-listenStart
			if ev.Port != late || ev.At.Before(listened) {
				t.Fatalf("port_ready %d at %v, want %d after %v", ev.Port, ev.At, late, listened)
			}
			ready := expectEvent(t, s, agentapi.TypeReady)
			if fmt.Sprint(ready.Ports) != fmt.Sprint([]int{late, early}) || ready.At.Before(listened) {
				t.Fatalf("ready %v at %v", ready.Ports, ready.At)
			}
		})
	}
}

func TestHeartbeats(t *testing.T) {
	const interval = 50 * time.Millisecond
	token := newToken(t)
	opts, _ := testOptions(t, token)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	s := connectSession(t, host, token, agentapi.Config{HeartbeatInterval: interval})

	ready := expectEvent(t, s, agentapi.TypeReady)
	const n = 6
	var last agentapi.Event
	for i := range n {
		last = expectEvent(t, s, agentapi.TypeHeartbeat)
		if last.Seq != uint64(i+1) {
			t.Fatalf("heartbeat seq %d, want %d", last.Seq, i+1)
		}
		if last.Uptime <= 0 || last.MemAvailableKiB == 0 || last.Load1 < 0 {
			t.Fatalf("heartbeat %+v", last)
		}
	}
	// Single gaps jitter with scheduling; their average does not.
	if avg := last.At.Sub(ready.At) / n; avg < interval*8/10 || avg > 3*interval {
		t.Fatalf("heartbeats every %v on average, want about %v", avg, interval)
	}
}

func TestPing(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			opts, _ := testOptions(t, token)
			host, guestConn := tr.connect(t)
			startGuest(t, guestConn, token, opts)
			s := connectSession(t, host, token, agentapi.Config{})

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for range 3 {
				got, err := s.Ping(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if d := time.Since(got); d < -time.Minute || d > time.Minute {
					t.Fatalf("guest time %v, host time %v", got, time.Now())
				}
			}
		})
	}
}

// TestShutdown checks that the guest replies before powering off: its
// PowerOff, like a real one, never returns.
func TestShutdown(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			opts, logs := testOptions(t, token)
			var calls atomic.Int32
			powered, release := make(chan struct{}), make(chan struct{})
			opts.PowerOff = func() error {
				if calls.Add(1) == 1 {
					close(powered)
				}
				<-release
				return errors.New("still running")
			}
			host, guestConn := tr.connect(t)
			startGuest(t, guestConn, token, opts)
			t.Cleanup(func() { close(release) }) // runs before the guest is stopped
			s := connectSession(t, host, token, agentapi.Config{})

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case <-powered:
			case <-time.After(5 * time.Second):
				t.Fatal("PowerOff not called")
			}
			logs.waitFor(t, "powering off")
			if n := calls.Load(); n != 1 {
				t.Fatalf("PowerOff called %d times", n)
			}
		})
	}
}

func TestRequests(t *testing.T) {
	token := newToken(t)
	opts, _ := testOptions(t, token)
	hostConn, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	h := newRawHost(t, hostConn)

	// Before a session is configured, requests are refused.
	if res := h.request(agentapi.TypePing, 1); res.Error != "no session" {
		t.Fatalf("ping before handshake: %+v", res)
	}
	h.handshake(token, agentapi.Config{})
	h.next(agentapi.TypeReady)

	tests := []struct {
		name    string
		typ     string
		wantErr string
	}{
		{"ping", agentapi.TypePing, ""},
		{"unknown", "frobnicate", "unknown request type frobnicate"},
		{"future", "teleport", "unknown request type teleport"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			res := h.request(tt.typ, uint64(100+i))
			if res.Error != tt.wantErr {
				t.Fatalf("result error %q, want %q", res.Error, tt.wantErr)
			}
		})
	}
	h.t = t

	// A notification the agent does not know is ignored, and a request in
	// a future envelope version is refused.
	h.send("future_notice", 0, map[string]bool{"x": true})
	if _, err := io.WriteString(h.w, `{"v":2,"type":"ping","id":200}`+"\n"); err != nil {
		t.Fatal(err)
	}
	if res := h.next(agentapi.TypeResult); res.ID != 200 || res.Error != "unsupported protocol version 2" {
		t.Fatalf("v2 request: %+v", res)
	}
}

func TestOversizeLineFromHost(t *testing.T) {
	token := newToken(t)
	opts, logs := testOptions(t, token)
	hostConn, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	h := newRawHost(t, hostConn)
	h.handshake(token, agentapi.Config{})
	h.next(agentapi.TypeReady)

	line := `{"v":1,"type":"ping","id":5,"body":{"pad":"` + strings.Repeat("x", agentapi.MaxLineSize) + `"}}` + "\n"
	if _, err := io.WriteString(h.w, line); err != nil {
		t.Fatal(err)
	}
	// The line is dropped and the stream stays usable.
	if res := h.request(agentapi.TypePing, 6); res.Error != "" {
		t.Fatalf("ping after oversize line: %+v", res)
	}
	logs.waitFor(t, "line too long")
}

func TestNewChallengeRestartsSession(t *testing.T) {
	token := newToken(t)
	opts, _ := testOptions(t, token)
	hostConn, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	port := listenAny(t)
	h := newRawHost(t, hostConn)

	for range 2 {
		h.handshake(token, agentapi.Config{RequiredPorts: []int{port}, HeartbeatInterval: 20 * time.Millisecond})
		var pr agentapi.PortReady
		if err := h.next(agentapi.TypePortReady).DecodeBody(&pr); err != nil || pr.Port != port {
			t.Fatalf("port_ready %+v, %v", pr, err)
		}
		h.next(agentapi.TypeReady)
		h.next(agentapi.TypeHeartbeat)
	}
}

func TestServeStops(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			check := checkGoroutines(t)
			token := newToken(t)
			opts, _ := testOptions(t, token)
			host, guestConn := tr.connect(t)
			ctx, cancel := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- Serve(ctx, guestConn, token, opts) }()

			s := connectSession(t, host, token, agentapi.Config{RequiredPorts: []int{freePort(t)}})
			time.Sleep(50 * time.Millisecond) // the guest is probing
			cancel()
			select {
			case err := <-served:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Serve = %v, want Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve ignored ctx")
			}
			guestConn.Close()
			<-s.Done() // the peer went away
			if s.Err() == nil || errors.Is(s.Err(), agentapi.ErrClosed) {
				t.Fatalf("Err() = %v", s.Err())
			}
			for range s.Events() {
			}
			check()
		})
	}
}

// TestSessionCloseNoLeak checks that closing sessions leaves no goroutine
// behind on either side.
func TestSessionCloseNoLeak(t *testing.T) {
	check := checkGoroutines(t)
	for _, tr := range transports {
		token := newToken(t)
		opts, _ := testOptions(t, token)
		host, guestConn := tr.connect(t)
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- Serve(ctx, guestConn, token, opts) }()

		ctxH, cancelH := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := agentapi.Handshake(ctxH, host, token, agentapi.Config{HeartbeatInterval: 10 * time.Millisecond})
		cancelH()
		if err != nil {
			t.Fatal(err)
		}
		expectEvent(t, s, agentapi.TypeReady)
		expectEvent(t, s, agentapi.TypeHeartbeat)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-served; !isDisconnect(err) {
			t.Fatalf("%s: Serve = %v, want a disconnect", tr.name, err)
		}
		cancel()
		guestConn.Close()
	}
	check()
}
