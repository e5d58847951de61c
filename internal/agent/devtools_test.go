package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chromiumBin returns Debian's Chromium, or skips the test without it.
func chromiumBin(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("needs Debian's chromium (scripts/host-deps.sh --test installs it)")
	}
	return bin
}

// chromiumArgs are the flags of a quiet headless Chromium whose profile
// is dir and whose DevTools endpoint is on loopback port port (0: one it
// picks and writes into dir's DevToolsActivePort).
func chromiumArgs(dir, port string) []string {
	args := []string{"--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--disable-breakpad", "--disable-crash-reporter",
		"--user-data-dir=" + dir, "--remote-debugging-port=" + port}
	if os.Geteuid() == 0 {
		args = append([]string{"--no-sandbox"}, args...)
	}
	return args
}

// chromiumProfile is a profile directory for a Chromium the test starts.
// It is removed after the test's other cleanups (which end the browser),
// and again until nothing is left: a browser's last processes may still
// be writing into it for a moment after they were killed, which
// t.TempDir's single removal takes for a failure.
func chromiumProfile(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hearth-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for err := os.RemoveAll(dir); err != nil; err = os.RemoveAll(dir) {
			if time.Now().After(deadline) {
				t.Errorf("chromium's profile %s: %v", dir, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return dir
}

// chromium starts Debian's Chromium, headless, on url with its DevTools
// endpoint on a free loopback port, and returns that HOST:PORT. The
// browser and every process it started are killed when the test ends.
func chromium(t *testing.T, url string) string {
	t.Helper()
	bin := chromiumBin(t)
	dir := chromiumProfile(t)
	cmd := exec.Command(bin, append(chromiumArgs(dir, "0"), url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	// Chromium writes the port it chose into DevToolsActivePort.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort"))
		if port, _, ok := strings.Cut(string(b), "\n"); err == nil && ok && port != "" {
			return "127.0.0.1:" + port
		}
		if time.Now().After(deadline) {
			t.Fatal("chromium never opened its DevTools endpoint")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPage looks at the browser until it reports want, or fails the test.
func waitPage(t *testing.T, addr string, want pageState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last pageState
	var lastErr error
	for time.Now().Before(deadline) {
		if last, lastErr = checkPage(context.Background(), addr); last == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("page state %d, want %d (last error: %v)", last, want, lastErr)
}

// TestCheckPageWaitsForTheDocument holds the sign-in page's answer: the
// browser already lists the page under its URL (the navigation is
// pending), but the page is not on screen until the server answers.
func TestCheckPageWaitsForTheDocument(t *testing.T) {
	release := make(chan struct{})
	requested := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/authorize" {
			http.NotFound(w, r)
			return
		}
		select {
		case requested <- struct{}{}:
		default:
		}
		<-release
		fmt.Fprint(w, "<!doctype html><title>Sign in</title><p>Sign in to the fake provider")
	}))
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	addr := chromium(t, srv.URL+"/authorize?client_id=fake")
	select {
	case <-requested:
	case <-time.After(2 * time.Minute):
		t.Fatal("chromium never asked for the page")
	}
	// The navigation is pending: /json/list may already show its URL.
	for range 5 {
		if st, err := checkPage(context.Background(), addr); st != pageNotYet {
			t.Fatalf("page reported %d (err %v) while its server still holds the answer", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(release)
	waitPage(t, addr, pageOnScreen, time.Minute)
}

// TestCheckPageSeesTheErrorPage: a sign-in page that cannot load (nothing
// listens) is Chromium's error page, which fails the login at once.
func TestCheckPageSeesTheErrorPage(t *testing.T) {
	addr := chromium(t, "http://"+freeAddr(t)+"/authorize")
	waitPage(t, addr, pageError, time.Minute)
}

// TestCheckPageBrowserNotUp: nothing listens at the endpoint yet.
func TestCheckPageBrowserNotUp(t *testing.T) {
	if st, err := checkPage(context.Background(), freeAddr(t)); st != pageNotYet || err == nil {
		t.Fatalf("got %d, %v; want not yet, with the dial error", st, err)
	}
}

// TestTargetPath: only DevTools paths of ws:// URLs are followed, and only
// on the endpoint that was asked.
func TestTargetPath(t *testing.T) {
	for _, tc := range []struct {
		ws, want string
		ok       bool
	}{
		{"ws://127.0.0.1:9222/devtools/page/AB", "/devtools/page/AB", true},
		{"ws://127.0.0.1/devtools/page/AB", "/devtools/page/AB", true},
		{"ws://127.0.0.1:9222/other", "", false},
		{"ws://127.0.0.1:9222", "", false},
		{"http://127.0.0.1:9222/devtools/page/AB", "", false},
	} {
		got, err := targetPath(tc.ws)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("targetPath(%q) = %q, %v", tc.ws, got, err)
		}
	}
}

// TestWebSocketFrames: what wsWriteText sends (masked, each length form)
// wsReadMessage reads back; fragments are joined, control frames skipped,
// a close or a message over the limit ends the read.
func TestWebSocketFrames(t *testing.T) {
	for _, n := range []int{0, 125, 126, 0xffff, 0x10000} {
		var buf bytes.Buffer
		payload := bytes.Repeat([]byte{'a'}, n)
		if err := wsWriteText(&buf, payload); err != nil {
			t.Fatal(err)
		}
		if buf.Bytes()[1]&0x80 == 0 {
			t.Errorf("%d bytes: frame not masked", n)
		}
		got, err := wsReadMessage(bufio.NewReader(&buf), 1<<20)
		if err != nil || !bytes.Equal(got, payload) {
			t.Errorf("%d bytes: read back %d bytes, %v", n, len(got), err)
		}
	}
	frame := func(b0 byte, payload string) string { return string([]byte{b0, byte(len(payload))}) + payload }
	for _, tc := range []struct {
		name, in, want string
		limit          int
		bad            bool
	}{
		{"fragments", frame(0x01, "ab") + frame(0x09, "p") + frame(0x80, "cd"), "abcd", 64, false},
		{"close", frame(0x88, ""), "", 64, true},
		{"over the limit", frame(0x81, "abcdef"), "", 4, true},
		{"fragments over the limit", frame(0x01, "abc") + frame(0x80, "def"), "", 4, true},
		{"cut short", frame(0x81, "abcdef")[:4], "", 64, true},
	} {
		got, err := wsReadMessage(bufio.NewReader(strings.NewReader(tc.in)), tc.limit)
		if (err != nil) != tc.bad || string(got) != tc.want {
			t.Errorf("%s: got %q, %v", tc.name, got, err)
		}
	}
}

// TestWebSocketHandshake: the upgrade succeeds only on a 101 that proves
// the key (Sec-WebSocket-Accept).
func TestWebSocketHandshake(t *testing.T) {
	accept := func(req string) string {
		for _, l := range strings.Split(req, "\r\n") {
			if k, v, ok := strings.Cut(l, ": "); ok && k == "Sec-WebSocket-Key" {
				sum := sha1.Sum([]byte(v + wsGUID))
				return base64.StdEncoding.EncodeToString(sum[:])
			}
		}
		return ""
	}
	for _, tc := range []struct {
		name   string
		answer func(req string) string
		err    string
	}{
		{"accepted", func(req string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept:  " + accept(req) + "\r\n\r\n"
		}, ""},
		{"wrong accept", func(string) string {
			return "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n"
		}, "without a valid Sec-WebSocket-Accept"},
		{"refused", func(string) string { return "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" }, "refused: \"403 Forbidden\""},
		{"not http", func(string) string { return "SSH-2.0-OpenSSH\r\n\r\n" }, "malformed status line"},
	} {
		var req bytes.Buffer
		// The answer is made from the request, which is written first.
		r := &lazyReader{make: func() string { return tc.answer(req.String()) }}
		err := wsHandshake(&req, bufio.NewReader(r), "127.0.0.1:9222", "/devtools/page/AB")
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !strings.HasPrefix(req.String(), "GET /devtools/page/AB HTTP/1.1\r\nHost: 127.0.0.1:9222\r\n") {
			t.Errorf("%s: request %q", tc.name, req.String())
		}
	}
}

// lazyReader reads the string make returns, made at the first read.
type lazyReader struct {
	make func() string
	r    io.Reader
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.r == nil {
		l.r = strings.NewReader(l.make())
	}
	return l.r.Read(p)
}
