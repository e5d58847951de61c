package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var testToken = []byte("0123456789abcdef0123456789abcdef")

// fakeGuest is a scripted guest end for testing the host side alone.
type fakeGuest struct {
	t    *testing.T
	conn net.Conn
	enc  *Encoder
	dec  *Decoder
	wg   sync.WaitGroup
}

// newFakeGuest returns a guest on conn. At cleanup it closes conn and waits
// for the goroutines started by run.
func newFakeGuest(t *testing.T, conn net.Conn) *fakeGuest {
	g := &fakeGuest{t: t, conn: conn, enc: NewEncoder(conn), dec: NewDecoder(conn)}
	t.Cleanup(func() {
		conn.Close()
		g.wg.Wait()
	})
	return g
}

// run runs script in a goroutine that the test waits for.
func (g *fakeGuest) run(script func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		script()
	}()
}

func (g *fakeGuest) send(typ string, id uint64, body any) {
	g.t.Helper()
	env, err := NewMessage(typ, id, body)
	if err != nil {
		g.t.Error(err)
		return
	}
	if err := g.enc.Encode(env); err != nil {
		g.t.Errorf("guest send %s: %v", typ, err)
	}
}

func (g *fakeGuest) sendRaw(line string) {
	g.t.Helper()
	if _, err := io.WriteString(g.conn, line); err != nil {
		g.t.Errorf("guest send raw: %v", err)
	}
}

// read returns the next message from the host, skipping nothing.
func (g *fakeGuest) read() (Envelope, error) { return g.dec.Decode() }

// expect reads the next message and checks its type.
func (g *fakeGuest) expect(typ string) Envelope {
	g.t.Helper()
	env, err := g.read()
	if err != nil {
		g.t.Errorf("guest: waiting for %s: %v", typ, err)
		return Envelope{}
	}
	if env.Type != typ {
		g.t.Errorf("guest: got %s, want %s", env.Type, typ)
	}
	return env
}

// hello builds a hello answering challenge env, proving token.
func (g *fakeGuest) hello(env Envelope, token []byte) Hello {
	g.t.Helper()
	var c Challenge
	if err := env.DecodeBody(&c); err != nil {
		g.t.Error(err)
	}
	nonce, err := c.DecodeNonce()
	if err != nil {
		g.t.Error(err)
	}
	return Hello{
		Protocol: ProtocolVersion, AgentVersion: "test", BootTime: time.Now().Add(-time.Minute).UTC(),
		UptimeSeconds: 60, Hostname: "guest", Kernel: "6.1", Nonce: c.Nonce, Proof: Proof(token, nonce),
	}
}

// authenticate answers the challenge and reads the config.
func (g *fakeGuest) authenticate(token []byte) Config {
	g.t.Helper()
	g.send(TypeHello, 0, g.hello(g.expect(TypeChallenge), token))
	var cfg Config
	if err := g.expect(TypeConfig).DecodeBody(&cfg); err != nil {
		g.t.Error(err)
	}
	return cfg
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startSession runs Handshake against a fake guest doing script.
func startSession(t *testing.T, cfg Config, script func(g *fakeGuest)) (*Session, *fakeGuest) {
	t.Helper()
	host, guest := net.Pipe()
	g := newFakeGuest(t, guest)
	scripted := make(chan struct{})
	g.run(func() {
		defer close(scripted)
		script(g)
	})
	s, err := Handshake(ctxTimeout(t, 5*time.Second), host, testToken, cfg)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	<-scripted
	t.Cleanup(func() { s.Close() })
	return s, g
}

func nextEvent(t *testing.T, s *Session) Event {
	t.Helper()
	select {
	case ev, ok := <-s.Events():
		if !ok {
			t.Fatalf("events closed: %v", s.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func waitDone(t *testing.T, s *Session) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
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

func TestHandshakeSkipsStaleMessages(t *testing.T) {
	cfg := Config{RequiredPorts: []int{22, 8080}, HeartbeatInterval: 2 * time.Second}
	s, _ := startSession(t, cfg, func(g *fakeGuest) {
		// Left over from an earlier connection: the tail of a cut line, a
		// heartbeat, and a hello answering an earlier challenge.
		g.sendRaw(`_uptime_seconds":3}}` + "\n")
		g.send(TypeHeartbeat, 0, Heartbeat{Seq: 9})
		stale := Hello{Protocol: 1, Nonce: "c3RhbGU=", Proof: strings.Repeat("0", 64)}
		g.send(TypeHello, 0, stale)

		got := g.authenticate(testToken)
		if fmt.Sprint(got.RequiredPorts) != "[22 8080]" || got.HeartbeatInterval != 2*time.Second {
			t.Errorf("guest got config %+v, want %+v", got, cfg)
		}
	})
	if h := s.Hello(); h.Hostname != "guest" || h.AgentVersion != "test" || h.Uptime() != time.Minute {
		t.Errorf("Hello() = %+v", h)
	}
}

func TestHandshakeDefaultHeartbeat(t *testing.T) {
	startSession(t, Config{}, func(g *fakeGuest) {
		if cfg := g.authenticate(testToken); cfg.HeartbeatInterval != DefaultHeartbeatInterval || cfg.RequiredPorts == nil {
			t.Errorf("guest got config %+v", cfg)
		}
	})
}

func TestHandshakeRejects(t *testing.T) {
	tests := []struct {
		name    string
		hello   func(h *Hello)
		wantErr error
		reason  string
	}{
		{"bad proof", func(h *Hello) { h.Proof = Proof([]byte("wrong-token-wrong-token"), []byte("x")) }, ErrBadProof, "bad proof"},
		{"proof not hex", func(h *Hello) { h.Proof = strings.Repeat("z", 64) }, ErrProtocol, "proof"},
		{"short proof", func(h *Hello) { h.Proof = h.Proof[:10] }, ErrProtocol, "proof"},
		{"future protocol", func(h *Hello) { h.Protocol = 2 }, ErrProtocol, "protocol version 2"},
		{"huge hostname", func(h *Hello) { h.Hostname = strings.Repeat("h", 10000) }, ErrProtocol, "hostname"},
		{"negative uptime", func(h *Hello) { h.UptimeSeconds = -1 }, ErrProtocol, "uptime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, guest := net.Pipe()
			g := newFakeGuest(t, guest)
			guestDone := make(chan struct{})
			defer func() { <-guestDone }()
			g.run(func() {
				defer close(guestDone)
				h := g.hello(g.expect(TypeChallenge), testToken)
				tt.hello(&h)
				g.send(TypeHello, 0, h)
				var r Rejected
				if err := g.expect(TypeRejected).DecodeBody(&r); err != nil || !strings.Contains(r.Reason, tt.reason) {
					t.Errorf("rejected %+v (%v), want reason containing %q", r, err, tt.reason)
				}
				if _, err := g.read(); !errors.Is(err, io.EOF) {
					t.Errorf("after rejected: %v, want EOF", err)
				}
			})
			_, err := Handshake(ctxTimeout(t, 5*time.Second), host, testToken, Config{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestHandshakeErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		token   []byte
		guest   func(g *fakeGuest)
		wantErr error
	}{
		{"guest silent", Config{}, testToken, func(g *fakeGuest) { io.Copy(io.Discard, g.conn) }, context.DeadlineExceeded},
		{"guest hangs up", Config{}, testToken, func(g *fakeGuest) { g.expect(TypeChallenge); g.conn.Close() }, io.EOF},
		{"oversize line", Config{}, testToken, func(g *fakeGuest) {
			g.expect(TypeChallenge)
			g.sendRaw(strings.Repeat("x", MaxLineSize+1) + "\n")
		}, ErrLineTooLong},
		{"bad port", Config{RequiredPorts: []int{0}}, testToken, nil, nil},
		{"duplicate port", Config{RequiredPorts: []int{80, 80}}, testToken, nil, nil},
		{"interval too short", Config{HeartbeatInterval: time.Millisecond}, testToken, nil, nil},
		{"short token", Config{}, []byte("short"), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, guest := net.Pipe()
			g := newFakeGuest(t, guest)
			if tt.guest != nil {
				g.run(func() { tt.guest(g) })
			}
			// Only the silent guest needs the deadline to pass; the others
			// fail as soon as the handshake reads what they sent, which a
			// loaded machine may take a while to get to.
			timeout := 10 * time.Second
			if errors.Is(tt.wantErr, context.DeadlineExceeded) {
				timeout = 300 * time.Millisecond
			}
			_, err := Handshake(ctxTimeout(t, timeout), host, tt.token, tt.cfg)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), string(testToken)) {
				t.Fatalf("error %q reveals the token", err)
			}
			// The connection is closed on error.
			if _, err := host.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
				t.Fatalf("conn still open: %v", err)
			}
		})
	}
}

func TestSessionEvents(t *testing.T) {
	s, g := startSession(t, Config{RequiredPorts: []int{80, 443}}, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		g.send(TypePortReady, 0, PortReady{Port: 443})
		g.send(TypePortReady, 0, PortReady{Port: 443}) // duplicate: ignored
		g.send(TypePortReady, 0, PortReady{Port: 80})
		g.send("future_event", 0, map[string]int{"x": 1}) // unknown: ignored
		g.send(TypeReady, 0, Ready{Ports: []int{443, 80}})
		g.send(TypeHeartbeat, 0, Heartbeat{Seq: 1, UptimeSeconds: 1.5, MemAvailableKiB: 1024, Load1: 0.5})
	})
	want := []string{"port_ready 443", "port_ready 80", "ready [80 443]", "heartbeat 1 1.5s 1024 0.5"}
	for _, w := range want {
		ev := nextEvent(t, s)
		var got string
		switch ev.Type {
		case TypePortReady:
			got = fmt.Sprint(ev.Type, " ", ev.Port)
		case TypeReady:
			got = fmt.Sprint(ev.Type, " ", ev.Ports)
		case TypeHeartbeat:
			got = fmt.Sprint(ev.Type, " ", ev.Seq, " ", ev.Uptime, " ", ev.MemAvailableKiB, " ", ev.Load1)
		}
		if got != w {
			t.Fatalf("event %q, want %q", got, w)
		}
		if time.Since(ev.At) > 5*time.Second {
			t.Fatalf("event time %v", ev.At)
		}
	}
}

// TestSessionSlowConsumer checks that heartbeats are dropped, but port_ready
// and ready never are, when nobody reads Events, and that the session keeps
// answering meanwhile.
func TestSessionSlowConsumer(t *testing.T) {
	s, g := startSession(t, Config{RequiredPorts: []int{80}}, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		for i := range 200 {
			g.send(TypeHeartbeat, 0, Heartbeat{Seq: uint64(i + 1)})
		}
		g.send(TypePortReady, 0, PortReady{Port: 80})
		g.send(TypeReady, 0, Ready{Ports: []int{80}})
		ping := g.expect(TypePing)
		g.send(TypeResult, ping.ID, PingResult{GuestTime: time.Now()})
	})
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	var types []string
	for len(s.Events()) > 0 {
		types = append(types, (<-s.Events()).Type)
	}
	n := len(types)
	if n < 2 || types[n-2] != TypePortReady || types[n-1] != TypeReady {
		t.Fatalf("events %v: want heartbeats then port_ready, ready", types)
	}
}

func TestSessionProtocolViolations(t *testing.T) {
	tests := []struct {
		name    string
		guest   func(g *fakeGuest)
		wantErr error
	}{
		{"port not required", func(g *fakeGuest) { g.send(TypePortReady, 0, PortReady{Port: 81}) }, ErrProtocol},
		{"port out of range", func(g *fakeGuest) { g.send(TypePortReady, 0, PortReady{Port: 70000}) }, ErrProtocol},
		{"ready before port_ready", func(g *fakeGuest) { g.send(TypeReady, 0, Ready{Ports: []int{80}}) }, ErrProtocol},
		{"ready with wrong ports", func(g *fakeGuest) {
			g.send(TypePortReady, 0, PortReady{Port: 80})
			g.send(TypeReady, 0, Ready{Ports: []int{80, 80}})
		}, ErrProtocol},
		{"negative uptime", func(g *fakeGuest) { g.send(TypeHeartbeat, 0, Heartbeat{UptimeSeconds: -5}) }, ErrProtocol},
		{"bad body", func(g *fakeGuest) { g.sendRaw(`{"v":1,"type":"heartbeat","body":{"seq":"one"}}` + "\n") }, ErrProtocol},
		{"wrong version", func(g *fakeGuest) { g.sendRaw(`{"v":2,"type":"heartbeat","body":{}}` + "\n") }, ErrProtocol},
		{"malformed line", func(g *fakeGuest) { g.sendRaw("not json\n") }, ErrMalformed},
		{"oversize line", func(g *fakeGuest) { g.sendRaw(strings.Repeat("x", MaxLineSize+1) + "\n") }, ErrLineTooLong},
		{"hang up", func(g *fakeGuest) { g.conn.Close() }, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, g := startSession(t, Config{RequiredPorts: []int{80}}, func(g *fakeGuest) { g.authenticate(testToken) })
			g.run(func() {
				tt.guest(g)
				io.Copy(io.Discard, g.conn)
			})
			waitDone(t, s)
			if err := s.Err(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Err() = %v, want %v", err, tt.wantErr)
			}
			for range s.Events() { // closed
			}
			if _, err := s.Ping(context.Background()); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Ping after end: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestSessionCalls(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	guestTime := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	g.run(func() {
		// Answer the ping, then the shutdown with an error, and ignore a
		// result nobody waits for.
		g.send(TypeResult, 999, PingResult{GuestTime: guestTime})
		ping := g.expect(TypePing)
		g.send(TypeResult, ping.ID, PingResult{GuestTime: guestTime})
		sd := g.expect(TypeShutdown)
		env, _ := NewResult(sd.ID, nil, errors.New("not now"))
		g.enc.Encode(env)
		g.expect(TypePing) // never answered
		io.Copy(io.Discard, g.conn)
	})
	got, err := s.Ping(ctxTimeout(t, 5*time.Second))
	if err != nil || !got.Equal(guestTime) {
		t.Fatalf("Ping = %v, %v; want %v", got, err, guestTime)
	}
	err = s.Shutdown(ctxTimeout(t, 5*time.Second))
	var remote *RemoteError
	if !errors.As(err, &remote) || remote.Message != "not now" || remote.Request != TypeShutdown {
		t.Fatalf("Shutdown = %v, want RemoteError", err)
	}
	_, err = s.Ping(ctxTimeout(t, 100*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered Ping = %v, want DeadlineExceeded", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Ping(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ping with a cancelled context = %v, want Canceled", err)
	}
	select {
	case <-s.Done():
		t.Fatalf("a timed-out call ended the session: %v", s.Err())
	default:
	}
}

// TestSessionCallWhilePeerLeaves checks that a pending call fails when the
// guest goes away.
func TestSessionCallWhilePeerLeaves(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		g.expect(TypePing)
		g.conn.Close()
	})
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); !errors.Is(err, io.EOF) {
		t.Fatalf("Ping = %v, want EOF", err)
	}
}

func TestSessionCloseNoLeak(t *testing.T) {
	check := checkGoroutines(t)
	for range 5 {
		host, guest := net.Pipe()
		g := newFakeGuest(t, guest)
		g.run(func() {
			g.authenticate(testToken)
			io.Copy(io.Discard, g.conn)
		})
		s, err := Handshake(ctxTimeout(t, 5*time.Second), host, testToken, Config{})
		if err != nil {
			t.Fatal(err)
		}
		pinged := make(chan error, 1)
		go func() { _, err := s.Ping(context.Background()); pinged <- err }()
		time.Sleep(10 * time.Millisecond)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-pinged; !errors.Is(err, ErrClosed) {
			t.Fatalf("pending Ping = %v, want ErrClosed", err)
		}
		if err := s.Close(); err != nil { // idempotent
			t.Fatal(err)
		}
		if !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("Err() = %v", s.Err())
		}
		guest.Close()
	}
	check()
}
