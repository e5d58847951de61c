package viewer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testSigner(t *testing.T) *Signer {
	t.Helper()
	s, err := NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sign(t *testing.T, s *Signer, c Claims) string {
	t.Helper()
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestNewSignerShortKey(t *testing.T) {
	if _, err := NewSigner(make([]byte, 31)); err == nil {
		t.Fatal("31-byte key accepted")
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	s := testSigner(t)
	now := time.Unix(1_800_000_000, 0)
	in := Claims{VMID: "vm-1", Session: "s-1", ViewOnly: true, Expires: now.Add(time.Minute)}
	got, err := s.Verify(sign(t, s, in), "vm-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if got.VMID != in.VMID || got.Session != in.Session || !got.ViewOnly || !got.Expires.Equal(in.Expires) || got.Nonce == "" {
		t.Fatalf("claims = %+v, want %+v with a nonce", got, in)
	}
	other := sign(t, s, in)
	if o, _ := s.Verify(other, "vm-1", now); o.Nonce == got.Nonce {
		t.Fatal("two tokens share a nonce")
	}
}

func TestVerifyRefuses(t *testing.T) {
	s := testSigner(t)
	now := time.Unix(1_800_000_000, 0)
	good := sign(t, s, Claims{VMID: "vm-1", Expires: now.Add(time.Minute)})
	other, err := NewSigner([]byte("another key that is long enough!!"))
	if err != nil {
		t.Fatal(err)
	}
	body, mac, _ := strings.Cut(good, ".")
	tampered := b64.EncodeToString([]byte(`{"vm":"vm-2","exp":1900000000,"n":"x"}`)) + "." + mac
	tests := []struct {
		name  string
		token string
		vm    string
		now   time.Time
		want  error
	}{
		{"expired", good, "vm-1", now.Add(time.Minute), ErrExpired},
		{"long expired", good, "vm-1", now.Add(time.Hour), ErrExpired},
		{"wrong vm", good, "vm-2", now, ErrWrongVM},
		{"other key", sign(t, other, Claims{VMID: "vm-1", Expires: now.Add(time.Minute)}), "vm-1", now, ErrForged},
		{"tampered claims", tampered, "vm-1", now, ErrForged},
		{"flipped mac", body + "." + b64.EncodeToString(make([]byte, 32)), "vm-1", now, ErrForged},
		{"empty", "", "vm-1", now, ErrMalformed},
		{"one part", body, "vm-1", now, ErrMalformed},
		{"three parts", good + ".x", "vm-1", now, ErrMalformed},
		{"bad base64", body + ".!!!", "vm-1", now, ErrMalformed},
		{"short mac", body + "." + b64.EncodeToString([]byte("x")), "vm-1", now, ErrMalformed},
		{"huge", strings.Repeat("a", 5000) + "." + mac, "vm-1", now, ErrMalformed},
		{"signed garbage", signRaw(s, "not json"), "vm-1", now, ErrMalformed},
		{"signed no nonce", signRaw(s, `{"vm":"vm-1","exp":1900000000}`), "vm-1", now, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Verify(tt.token, tt.vm, tt.now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Fatal("error contains the token")
			}
		})
	}
}

// signRaw signs an arbitrary claims payload with s.
func signRaw(s *Signer, payload string) string {
	body := b64.EncodeToString([]byte(payload))
	return body + "." + b64.EncodeToString(s.mac(body))
}

func TestReplay(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := &Replay{now: func() time.Time { return now }}
	c := Claims{VMID: "vm-1", Nonce: "n1", Expires: now.Add(time.Minute)}
	if r.Seen(c) {
		t.Fatal("unused token seen")
	}
	if err := r.Use(c); err != nil {
		t.Fatal(err)
	}
	if err := r.Use(c); !r.Seen(c) || !errors.Is(err, ErrReplayed) {
		t.Fatalf("used token: seen %v, use %v", r.Seen(c), err)
	}
	if err := r.Use(Claims{Nonce: "n2", Expires: now.Add(2 * time.Minute)}); err != nil {
		t.Fatalf("fresh token refused: %v", err)
	}
	now = now.Add(90 * time.Second) // n1 expired, n2 not
	if r.Seen(c) || r.Len() != 1 {
		t.Fatalf("expired nonce kept: seen=%v len=%d", r.Seen(c), r.Len())
	}
	now = now.Add(time.Minute)
	if r.Len() != 0 || len(r.byExp) != 0 {
		t.Fatalf("expired nonces kept: %d in the map, %d in the heap", r.Len(), len(r.byExp))
	}
}

// The set holds at most Max unexpired tokens; expired ones make room.
func TestReplayBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := &Replay{Max: 3, now: func() time.Time { return now }}
	for i := range 3 {
		if err := r.Use(Claims{Nonce: fmt.Sprint(i), Expires: now.Add(time.Duration(i+1) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Use(Claims{Nonce: "x", Expires: now.Add(time.Minute)}); !errors.Is(err, ErrBusy) {
		t.Fatalf("fourth token: %v, want %v", err, ErrBusy)
	}
	now = now.Add(time.Second) // the first expires
	if err := r.Use(Claims{Nonce: "x", Expires: now.Add(time.Minute)}); err != nil {
		t.Fatalf("after one expired: %v", err)
	}
	if r.Len() != 3 {
		t.Fatalf("len = %d, want 3", r.Len())
	}
}

func TestReplayConcurrentUseOnce(t *testing.T) {
	var r Replay
	c := Claims{Nonce: "n", Expires: time.Now().Add(time.Minute)}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if r.Use(c) == nil {
				wins.Add(1)
			}
			r.Seen(c)
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent uses won, want 1", wins.Load())
	}
}

// fillReplay adds n unexpired tokens to r.
func fillReplay(r *Replay, n int, now time.Time) {
	base := r.Len()
	for i := range n {
		// Expiries spread over the next minute, as socket tokens' are.
		_ = r.Use(Claims{Nonce: "fill" + strconv.Itoa(base+i), Expires: now.Add(time.Minute + time.Duration(base+i)*time.Millisecond)})
	}
}

// perUse is the least time one Use on r took, per use, over a few rounds.
func perUse(r *Replay, now time.Time) time.Duration {
	const uses = 200
	best := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		for range uses {
			n, _ := newNonce()
			_ = r.Use(Claims{Nonce: n, Expires: now.Add(2 * time.Minute)})
		}
		best = min(best, time.Since(start)/uses)
	}
	return best
}

// A use does not scan the set: its cost barely grows from a thousand to a
// hundred thousand remembered tokens (a scan's grows a hundredfold; the
// set grows in steps so that one fails early). BenchmarkReplayUse shows
// the numbers.
func TestReplayUseIsNotLinear(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := &Replay{Max: 1 << 30, now: func() time.Time { return now }}
	fillReplay(r, 1_000, now)
	small := perUse(r, now)
	for r.Len() < 100_000 {
		fillReplay(r, 10_000, now)
		if cost := perUse(r, now); cost > 20*small+20*time.Microsecond {
			t.Fatalf("a use costs %v with %d tokens, %v with 1k: it grows with the set", cost, r.Len(), small)
		}
	}
	t.Logf("per use: %v with 1k tokens, %v with %d", small, perUse(r, now), r.Len())
}

// BenchmarkReplayUse is one use of a set holding n unexpired tokens, in
// the steady state of a busy daemon: each use adds a token and the oldest
// one expires, so the set stays at n.
func BenchmarkReplayUse(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			const step = time.Millisecond
			now := time.Unix(1_800_000_000, 0)
			r := &Replay{Max: 1 << 30, now: func() time.Time { return now }}
			for i := range n {
				_ = r.Use(Claims{Nonce: "fill" + strconv.Itoa(i), Expires: now.Add(time.Duration(i+1) * step)})
			}
			i := 0
			for b.Loop() {
				now = now.Add(step)
				if err := r.Use(Claims{Nonce: "b" + strconv.Itoa(i), Expires: now.Add(time.Duration(n) * step)}); err != nil {
					b.Fatal(err)
				}
				i++
			}
			if got := r.Len(); got != n {
				b.Fatalf("set holds %d tokens, want %d", got, n)
			}
		})
	}
}

// acceptCounter is a loopback listener that counts the connections it
// accepts.
type acceptCounter struct {
	ln      net.Listener
	accepts atomic.Int32
}

func newAcceptCounter(t *testing.T) *acceptCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptCounter{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.accepts.Add(1)
			c.Close()
		}
	}()
	return a
}

func (a *acceptCounter) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", a.ln.Addr().String())
}

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
