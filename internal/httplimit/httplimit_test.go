package httplimit

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// server runs h behind a Limiter with cfg on loopback.
func server(t *testing.T, cfg Config, h http.Handler) (string, *Limiter) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, lim := cfg.Server(h, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lim.Listener(ln))
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String(), lim
}

// dialFrom connects to addr from the loopback address src ("" for any).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond for up to 30 s (a loaded machine is slow).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedByServer reports whether the server closed c (reading gives EOF
// or a reset within 30 s); any response bytes before are returned.
func closedByServer(c net.Conn) (string, bool) {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return string(b), false
	}
	return string(b), true
}

// get sends a GET on c and returns the status line.
func get(t *testing.T, c net.Conn, path string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetDeadline(time.Time{})
	return resp.Status
}

var long = Config{ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: time.Minute}

func ok(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }

func TestPerClientCapEvictsTheLongestIdle(t *testing.T) {
	cfg := long
	cfg.MaxConnsPerClient = 3
	addr, lim := server(t, cfg, http.HandlerFunc(ok))
	// Three connections: one that never sends a request, one idle between
	// keep-alive requests, and the newest, which sent nothing either.
	silent := dialFrom(t, "", addr)
	waitFor(t, "1 open", func() bool { return lim.Stats().Open == 1 })
	keepalive := dialFrom(t, "", addr)
	if s := get(t, keepalive, "/"); s != "200 OK" {
		t.Fatal(s)
	}
	waitFor(t, "keepalive to be idle again", func() bool { return lim.Stats().Idle == 2 })
	newest := dialFrom(t, "", addr)
	waitFor(t, "3 open", func() bool { return lim.Stats().Open == 3 })

	// A fourth from the same address closes the longest idle: silent.
	fourth := dialFrom(t, "", addr)
	if _, closed := closedByServer(silent); !closed {
		t.Fatal("the longest-idle connection was not closed")
	}
	if s := get(t, fourth, "/"); s != "200 OK" {
		t.Fatal(s)
	}
	// keepalive became idle (again) after newest connected, so it goes
	// next; newest and fourth are still served.
	fifth := dialFrom(t, "", addr)
	if _, closed := closedByServer(keepalive); !closed {
		t.Fatal("the idle keep-alive connection was not closed")
	}
	for _, c := range []net.Conn{newest, fifth} {
		if s := get(t, c, "/"); s != "200 OK" {
			t.Fatal(s)
		}
	}
	if st := lim.Stats(); st.Open != 3 || st.Evicted != 2 || st.Refused != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRefusedOnlyWhenEveryConnectionIsBusy(t *testing.T) {
	cfg := long
	cfg.MaxConnsPerClient = 2
	release := make(chan struct{})
	var started sync.WaitGroup
	addr, lim := server(t, cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			started.Done()
			<-release
		}
		ok(w, r)
	}))
	var busy []net.Conn
	started.Add(2)
	for range 2 {
		c := dialFrom(t, "", addr)
		if _, err := io.WriteString(c, "GET /block HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		busy = append(busy, c)
	}
	started.Wait()
	// Both held connections are busy: a third is refused with a 503.
	c := dialFrom(t, "", addr)
	got, closed := closedByServer(c)
	if !closed || !strings.HasPrefix(got, "HTTP/1.1 503 ") || !strings.Contains(got, "too many connections") {
		t.Fatalf("third connection: closed=%v, read %q", closed, got)
	}
	if st := lim.Stats(); st.Refused != 1 || st.Open != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Another client address is not refused at this client's cap.
	if s := get(t, dialFrom(t, "127.0.0.2", addr), "/"); s != "200 OK" {
		t.Fatal(s)
	}
	close(release)
	for _, c := range busy {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("blocked request: %v", err)
		}
	}
	// Now they are idle keep-alive connections (with 127.0.0.2's): a new
	// one gets room.
	waitFor(t, "the finished connections to be idle", func() bool { return lim.Stats().Idle == 3 })
	if s := get(t, dialFrom(t, "", addr), "/"); s != "200 OK" {
		t.Fatal(s)
	}
}

func TestOverallCapEvictsAcrossClients(t *testing.T) {
	cfg := long
	cfg.MaxConns = 2
	addr, lim := server(t, cfg, http.HandlerFunc(ok))
	first := dialFrom(t, "127.0.0.1", addr)
	waitFor(t, "1 open", func() bool { return lim.Stats().Open == 1 })
	second := dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "2 open", func() bool { return lim.Stats().Open == 2 })
	third := dialFrom(t, "127.0.0.3", addr)
	if _, closed := closedByServer(first); !closed {
		t.Fatal("the longest-idle connection (another client's) was not closed")
	}
	for _, c := range []net.Conn{second, third} {
		if s := get(t, c, "/"); s != "200 OK" {
			t.Fatal(s)
		}
	}
}

// A hijacked connection (the viewer's WebSocket) counts until it is
// closed, and is never closed to make room.
func TestHijackedConnectionsCountUntilClosed(t *testing.T) {
	cfg := long
	cfg.MaxConnsPerClient = 1
	hijacked := make(chan net.Conn, 1)
	addr, lim := server(t, cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" {
			ok(w, r)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n")
		_ = brw.Flush()
		hijacked <- c
	}))
	c := dialFrom(t, "", addr)
	if s := get(t, c, "/ws"); !strings.HasPrefix(s, "101") {
		t.Fatal(s)
	}
	hc := <-hijacked
	if st := lim.Stats(); st.Open != 1 || st.Idle != 0 {
		t.Fatalf("stats with a hijacked connection: %+v", st)
	}
	got, closed := closedByServer(dialFrom(t, "", addr))
	if !closed || !strings.HasPrefix(got, "HTTP/1.1 503 ") {
		t.Fatalf("a connection beyond the cap while the hijacked one is held: %q", got)
	}
	hc.Close()
	waitFor(t, "the hijacked connection to be released", func() bool { return lim.Stats().Open == 0 })
	if s := get(t, dialFrom(t, "", addr), "/"); s != "200 OK" {
		t.Fatal(s)
	}
}

// The timeouts cut clients that hold a connection without finishing
// anything: silent, trickling headers or body, idle after a request.
func TestSlowAndIdleClientsAreCut(t *testing.T) {
	cfg := Config{ReadHeaderTimeout: 500 * time.Millisecond, ReadTimeout: time.Second,
		WriteTimeout: time.Second, IdleTimeout: 500 * time.Millisecond, MaxHeaderBytes: 4 << 10}
	addr, lim := server(t, cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusRequestTimeout)
			return
		}
		ok(w, r)
	}))
	trickle := func(c net.Conn, parts ...string) {
		for _, p := range parts {
			if _, err := io.WriteString(c, p); err != nil {
				return // cut
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Each case sets its connection going and returns.
	cases := map[string]func(c net.Conn){
		"silent": func(net.Conn) {},
		"trickled headers": func(c net.Conn) {
			go trickle(c, strings.Split("GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "+strings.Repeat("a", 100), "")...)
		},
		"trickled body": func(c net.Conn) {
			go trickle(c, append([]string{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"}, strings.Split(strings.Repeat("b", 100), "")...)...)
		},
		"idle keep-alive": func(c net.Conn) {
			if s := get(t, c, "/"); s != "200 OK" {
				t.Error(s)
			}
		},
	}
	var wg sync.WaitGroup
	for name, f := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialFrom(t, "", addr)
			start := time.Now()
			f(c)
			if _, closed := closedByServer(c); !closed {
				t.Errorf("%s: still open after %s", name, time.Since(start))
				return
			}
			// Bounded by the timeouts plus scheduling on a loaded machine.
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("%s: cut only after %s", name, d)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "every connection released", func() bool { return lim.Stats().Open == 0 })

	// Oversized headers are refused.
	c := dialFrom(t, "", addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 16<<10)+"\r\n\r\n")
	got, _ := closedByServer(c)
	if !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Fatalf("oversized headers: %q", got)
	}
}
