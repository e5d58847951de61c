package api_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/httplimit"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/test/connflood"
)

// short are limits for tests: a second to send a request, and to take
// each write.
var short = httplimit.Config{ReadHeaderTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
	IdleTimeout: time.Second, MaxHeaderBytes: 8 << 10, MaxConns: 64, MaxConnsPerClient: 32}

func dial(t *testing.T, f *fixture) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", f.srv.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A body trickled a byte at a time is cut at the read timeout with a 408,
// with or without a key; so are trickled headers and silence.
func TestSlowClientsAreCut(t *testing.T) {
	f := newFixtureWith(t, &short)
	for _, key := range []string{f.alice, ""} {
		c := dial(t, f)
		start := time.Now()
		hdr := "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
		if key != "" {
			hdr += "Authorization: Bearer " + key + "\r\n"
		}
		if _, err := io.WriteString(c, hdr+"\r\n{"); err != nil {
			t.Fatal(err)
		}
		go func() {
			for range 50 {
				time.Sleep(200 * time.Millisecond)
				if _, err := io.WriteString(c, " "); err != nil {
					return
				}
			}
		}()
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("trickled body (key %v): %v", key != "", err)
		}
		b, _ := io.ReadAll(resp.Body)
		want := http.StatusRequestTimeout
		if key == "" {
			want = http.StatusUnauthorized // refused before the body is read
		}
		if resp.StatusCode != want {
			t.Fatalf("trickled body (key %v): %d %s", key != "", resp.StatusCode, b)
		}
		if want == http.StatusRequestTimeout && !strings.Contains(string(b), "request_timeout") {
			t.Fatalf("trickled body: %s", b)
		}
		// And the connection is gone.
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("connection still open after a trickled body")
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("trickled body (key %v) cut after %s", key != "", d)
		}
	}
	for name, send := range map[string]string{"silent": "", "trickled headers": "GET /v1/vms HTTP/1.1\r\nHost"} {
		c := dial(t, f)
		start := time.Now()
		_, _ = io.WriteString(c, send)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("%s: still open after %s", name, time.Since(start))
			}
		}
	}
}

// The read timeout bounds a request's arrival only: a wait, an exec and
// the streams go on as long as they need, and an event stream sends
// keepalives.
func TestLongRequestsOutliveTheReadTimeout(t *testing.T) {
	t.Cleanup(api.SetSSEKeepalive(300 * time.Millisecond))
	f := newFixtureWith(t, &short)
	id := f.readyVM("minimal")

	start := time.Now()
	a := f.do("GET", "/v1/vms/"+id+"/wait?state=stopped&timeout=3s", f.alice, "")
	if a.status != http.StatusRequestTimeout || a.errCode() != "wait_timeout" || time.Since(start) < 3*time.Second {
		t.Fatalf("a 3 s wait with a 1 s read timeout: %d %s after %s", a.status, a.body, time.Since(start))
	}
	// Posted body, then a slow answer: not cut by the read deadline.
	if a := f.do("POST", "/v1/vms/"+id+"/exec", f.alice, `{"argv":["echo","hi"]}`); a.status != 200 {
		t.Fatalf("exec: %d %s", a.status, a.body)
	}

	req, _ := http.NewRequest("GET", f.srv.URL+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	time.Sleep(3 * time.Second) // past both timeouts, with nothing to send but keepalives
	f.createVM(f.alice, `{"image":"minimal"}`)
	keepalives, events := 0, 0
	deadline := time.After(30 * time.Second)
	for events == 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the event stream ended after %d keepalives", keepalives)
			}
			if l == ": keepalive" {
				keepalives++
			}
			if strings.HasPrefix(l, "data: ") {
				events++
			}
		case <-deadline:
			t.Fatal("no event on the stream")
		}
	}
	if keepalives < 3 {
		t.Fatalf("%d keepalives in 3 s at 300 ms", keepalives)
	}
}

func TestConnFloodHelper(t *testing.T) { connflood.Helper() }

// 20,000 connections from the administrator's own address, each sending
// one request without a key and then idling, do not keep an admin request
// out: the server holds at most api.max_connections_per_client of them
// and closes the idle ones to make room. The flood runs in helper
// processes, so only the server's own descriptors are at stake (20,000
// held connections would exhaust a limit of 20,000).
func TestIdleFloodDoesNotLockOutTheAdmin(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 20,000 connections")
	}
	const flood = 20000
	defaults := config.Default().API
	limits := httplimit.Config{ReadHeaderTimeout: defaults.ReadHeaderTimeout.Duration, ReadTimeout: defaults.ReadTimeout.Duration,
		WriteTimeout: defaults.WriteTimeout.Duration, IdleTimeout: defaults.IdleTimeout.Duration,
		MaxHeaderBytes: defaults.MaxHeaderBytes, MaxConns: defaults.MaxConnections, MaxConnsPerClient: defaults.MaxConnectionsPerClient}
	f := newFixtureWith(t, &limits)
	start := time.Now()
	fl := connflood.Open(t, f.srv.Listener.Addr().String(), flood, connflood.Options{RequestEvery: 1})
	t.Logf("%d connections opened in %s (%d failed); server holds %+v", fl.Opened, time.Since(start), fl.Failed, f.conns.Stats())

	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/v1/vms", nil)
	req.Header.Set("Authorization", "Bearer "+f.admin)
	resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
	if err != nil {
		t.Fatalf("admin request with %d flood connections: %v", fl.Opened, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("admin request: %d", resp.StatusCode)
	}
	st := f.conns.Stats()
	t.Logf("admin answered in %s; server holds %+v", time.Since(start), st)
	if st.Open > limits.MaxConnsPerClient+1 {
		t.Fatalf("server holds %d connections from one address, cap %d", st.Open, limits.MaxConnsPerClient)
	}
	if fl.Failed > flood/10 {
		t.Fatalf("%d of %d flood connections could not even be opened", fl.Failed, flood)
	}
}

// A whole console read by a client that takes it slowly but steadily is
// delivered whole, however long it takes: the write deadline is per chunk,
// not for the whole answer (a 16 MiB console would otherwise need about
// half a megabyte a second to arrive within api.write_timeout).
func TestSlowSteadyConsoleReadIsWhole(t *testing.T) {
	limits := short
	f := newFixture(t, func(o *fixtureOptions) {
		o.limits = &limits
		o.vm = func(c *vm.Config) {
			c.Console = vm.ConsoleConfig{Limits: consolelog.Limits{Max: 16 << 20, Head: 1 << 20}, Rate: 1 << 30, Burst: 1 << 30}
		}
	})
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	f.awaitConsole(v.ID, 30) // the fake's boot lines
	out := lines(0, 200_000) // 7.4 MB: more than the kernel buffers between the two ends hold
	f.guestConsole(v.ID, out)
	a := f.awaitConsole(v.ID, int64(30+len(out)))
	size, _ := strconv.ParseInt(a.header.Get("X-Console-Size"), 10, 64)

	// A client with a small receive buffer, reading 64 KiB every 50 ms.
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /v1/vms/" + v.ID + "/console HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + f.alice + "\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4096), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var got int64
	buf := make([]byte, 64<<10)
	for {
		n, err := io.ReadFull(resp.Body, buf)
		got += int64(n)
		if err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	if got != size {
		t.Fatalf("a steady reader got %d of the console's %d bytes in %s", got, size, took.Round(time.Millisecond))
	}
	if took < 2*limits.WriteTimeout {
		t.Fatalf("read in %s: too fast to show anything about a %s write timeout", took, limits.WriteTimeout)
	}
	t.Logf("%d bytes in %s through a %s write timeout", got, took.Round(time.Millisecond), limits.WriteTimeout)
}
