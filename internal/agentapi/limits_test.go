package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// flood has the guest send line until the host stops reading; it returns
// how many lines the host accepted (net.Pipe writes complete only once
// read).
func flood(g *fakeGuest, line string) *atomic.Int64 {
	var n atomic.Int64
	g.run(func() {
		for {
			if _, err := io.WriteString(g.conn, line); err != nil {
				return
			}
			n.Add(1)
		}
	})
	return &n
}

func violation(t *testing.T, err error, want string) {
	t.Helper()
	v, ok := AsViolation(err)
	if !ok || !errors.Is(err, ErrProtocol) {
		t.Fatalf("want a protocol violation, got %v", err)
	}
	if !strings.Contains(v.Reason, want) {
		t.Fatalf("violation %q, want it to say %q", v.Reason, want)
	}
}

func heartbeatLine(seq int) string {
	return fmt.Sprintf(`{"v":1,"type":"heartbeat","body":{"seq":%d,"uptime_seconds":1}}`+"\n", seq)
}

// A guest flooding heartbeats is cut off after its burst: the host reads
// a few hundred messages, not millions, and says what happened.
func TestHeartbeatFloodEndsTheSession(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	start := time.Now()
	n := flood(g, heartbeatLine(1))
	waitDone(t, s)
	violation(t, s.Err(), "heartbeat flood")
	elapsed := time.Since(start)
	// The burst, plus what the rate let in while the host read, plus the
	// line that overflowed; the handshake's own messages came out of the
	// same burst.
	max := int64(DefaultMessageBurst + (DefaultMessageRate+1)*elapsed.Seconds() + 2)
	if got := n.Load(); got > max || got < DefaultMessageBurst-2 {
		t.Fatalf("host read %d heartbeats before cutting the flood off, want %d-%d", got, DefaultMessageBurst-2, max)
	}
}

// Messages that come no faster than the limits allow are never cut off,
// even with a tight burst: the rate includes twice the heartbeat rate.
func TestHeartbeatsAtTheirIntervalPass(t *testing.T) {
	lim := Limits{MessageBurst: MaxRequiredPorts + 2, MessageRate: 1, ByteBurst: MaxOtherLine, ByteRate: 1 << 20}
	cfg := Config{HeartbeatInterval: 10 * time.Millisecond, Limits: lim}
	n := lim.MessageBurst * 3 / 2
	s, g := startSession(t, cfg, func(g *fakeGuest) { g.authenticate(testToken) })
	g.run(func() {
		tick := time.NewTicker(cfg.HeartbeatInterval)
		defer tick.Stop()
		for i := 1; i <= n; i++ {
			<-tick.C
			g.send(TypeHeartbeat, 0, Heartbeat{Seq: uint64(i)})
		}
	})
	for i := 1; i <= n; i++ {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatalf("session ended after %d heartbeats: %v", i-1, s.Err())
			}
			_ = ev
		case <-time.After(10 * time.Second):
			t.Fatalf("heartbeat %d never came", i)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
}

// Each event type has a size far below MaxLineSize.
func TestOversizedEventIsAViolation(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	pad := strings.Repeat("a", MaxEventLine)
	g.run(func() {
		g.sendRaw(`{"v":1,"type":"heartbeat","body":{"seq":1,"pad":"` + pad + `"}}` + "\n")
		io.Copy(io.Discard, g.conn)
	})
	waitDone(t, s)
	violation(t, s.Err(), fmt.Sprintf("heartbeat message of %d bytes, at most %d allowed", len(pad)+52, MaxEventLine))
}

// login_progress and types this side does not know may be longer than an
// event, up to MaxOtherLine; a reason names a known type, never a type
// the guest made up.
func TestOversizedOtherMessagesAreViolations(t *testing.T) {
	pad := strings.Repeat("a", MaxOtherLine)
	for _, tc := range []struct{ typ, want string }{
		{TypeLoginProgress, "login_progress message of"},
		{"evil\\u001b[2J", "unknown message message of"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
			g.run(func() {
				g.sendRaw(`{"v":1,"type":"` + tc.typ + `","id":1,"body":{"pad":"` + pad + `"}}` + "\n")
				io.Copy(io.Discard, g.conn)
			})
			waitDone(t, s)
			violation(t, s.Err(), tc.want)
			violation(t, s.Err(), fmt.Sprintf("at most %d allowed", MaxOtherLine))
			if strings.Contains(s.Err().Error(), "evil") {
				t.Fatalf("the reason repeats the guest's type: %v", s.Err())
			}
		})
	}
}

// A line that never ends is not read without bound: the host stops at
// MaxLineSize and ends the session.
func TestEndlessLineIsCutAtMaxLineSize(t *testing.T) {
	s, g := startSession(t, Config{}, func(g *fakeGuest) { g.authenticate(testToken) })
	n := flood(g, strings.Repeat("x", 64<<10))
	waitDone(t, s)
	if err := s.Err(); !errors.Is(err, ErrLineTooLong) || !errors.Is(err, ErrProtocol) {
		t.Fatalf("Err() = %v, want a violation matching ErrLineTooLong", err)
	}
	if read := n.Load() * 64 << 10; read > MaxLineSize+2*readBufferSize {
		t.Fatalf("host read %d bytes of one line", read)
	}
}

// A guest that starts a line and stalls is cut off after LineTimeout,
// whether in a session or before its hello.
func TestStalledLineIsCut(t *testing.T) {
	cfg := Config{Limits: Limits{LineTimeout: time.Second}}
	t.Run("session", func(t *testing.T) {
		s, g := startSession(t, cfg, func(g *fakeGuest) { g.authenticate(testToken) })
		start := time.Now()
		g.run(func() {
			g.sendRaw(heartbeatLine(1) + `{"v":1,"type":"heart`)
			io.Copy(io.Discard, g.conn)
		})
		if ev := nextEvent(t, s); ev.Type != TypeHeartbeat {
			t.Fatalf("first event %v", ev.Type)
		}
		waitDone(t, s)
		violation(t, s.Err(), "a message was not finished within 1s of its first byte")
		if d := time.Since(start); d < time.Second {
			t.Fatalf("cut after %v, before the timeout", d)
		}
	})
	t.Run("handshake", func(t *testing.T) {
		host, guest := net.Pipe()
		g := newFakeGuest(t, guest)
		g.run(func() {
			g.expect(TypeChallenge)
			g.sendRaw(`{"v":1,"type":"hel`)
			io.Copy(io.Discard, g.conn)
		})
		_, err := Handshake(ctxTimeout(t, 30*time.Second), host, testToken, cfg)
		violation(t, err, "not finished within 1s")
	})
}

// Stale lines before the hello count: a guest cannot flood the host by
// never answering its challenge.
func TestFloodBeforeHelloFailsTheHandshake(t *testing.T) {
	host, guest := net.Pipe()
	g := newFakeGuest(t, guest)
	n := flood(g, heartbeatLine(1))
	_, err := Handshake(ctxTimeout(t, 30*time.Second), host, testToken, Config{})
	violation(t, err, "heartbeat flood")
	if got := n.Load(); got > 2*DefaultMessageBurst {
		t.Fatalf("host read %d lines before the hello", got)
	}
}

// Results the host asked for are not charged, however large, even when
// they arrive after the caller gave up; results nobody asked for are.
func TestResultsAreChargedOnlyWhenUnasked(t *testing.T) {
	lim := Limits{ByteBurst: MaxOtherLine, ByteRate: 1}
	pad := strings.Repeat("r", 200<<10)
	big := func(id uint64) string {
		return fmt.Sprintf(`{"v":1,"type":"result","id":%d,"body":{"guest_time":"2030-01-01T00:00:00Z","pad":"%s"}}`+"\n", id, pad)
	}
	s, g := startSession(t, Config{Limits: lim}, func(g *fakeGuest) { g.authenticate(testToken) })
	// Answered in time.
	for i := 0; i < 10; i++ {
		g.run(func() { g.sendRaw(big(g.expect(TypePing).ID)) })
		if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	// Answered after the caller gave up.
	for i := 0; i < 10; i++ {
		ids := make(chan uint64, 1)
		g.run(func() { ids <- g.expect(TypePing).ID })
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := s.Ping(ctx); done <- err }()
		id := <-ids
		cancel()
		<-done
		g.run(func() { g.sendRaw(big(id)) })
	}
	g.run(func() { g.sendRaw(heartbeatLine(1)) })
	if ev := nextEvent(t, s); ev.Type != TypeHeartbeat || s.Err() != nil {
		t.Fatalf("after late results: %v %v", ev.Type, s.Err())
	}
	// Nobody asked for these.
	g.run(func() {
		g.sendRaw(big(1 << 40))
		io.Copy(io.Discard, g.conn)
	})
	waitDone(t, s)
	violation(t, s.Err(), "result flood")
}

// What the guest says about itself and its errors is stored clean.
func TestGuestTextIsClean(t *testing.T) {
	const evil = "1.0\x1b]0;owned\x07\x1b[2J\u009b1m"
	s, g := startSession(t, Config{}, func(g *fakeGuest) {
		h := g.hello(g.expect(TypeChallenge), testToken)
		h.AgentVersion, h.Hostname, h.Kernel = evil, evil, evil
		g.send(TypeHello, 0, h)
		g.expect(TypeConfig)
	})
	for _, f := range []string{s.Hello().AgentVersion, s.Hello().Hostname, s.Hello().Kernel} {
		if f != "1.0]0;owned[2J1m" {
			t.Fatalf("hello field %q", f)
		}
	}
	g.run(func() {
		ping := g.expect(TypePing)
		env, _ := NewResult(ping.ID, nil, errors.New("no\r\n\x1b[31mway"))
		g.enc.Encode(env)
	})
	_, err := s.Ping(ctxTimeout(t, 5*time.Second))
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "no  [31mway" {
		t.Fatalf("remote error %q", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := (Limits{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, l := range []Limits{
		{MessageRate: -1}, {ByteRate: -1}, {MessageBurst: 10}, {ByteBurst: 1000}, {LineTimeout: time.Millisecond},
	} {
		if err := l.WithDefaults().Validate(); err == nil {
			t.Errorf("%+v: want an error", l)
		}
		if err := (Config{Limits: l}).WithDefaults().Validate(); err == nil {
			t.Errorf("config with %+v: want an error", l)
		}
	}
}
