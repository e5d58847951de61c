package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	v1 "github.com/hearth-project/hearth/api"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/hearth-project/hearth/internal/api"
)

func init() {
	// The page and its assets are not JSON: the spec check only needs to
	// read them.
	for _, ct := range []string{"text/html", "text/javascript", "text/css", "text/plain"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
	}
}

// testAssets stand in for the built viewer page.
var testAssets = fstest.MapFS{
	"viewer.html":            {Data: []byte("<!doctype html><title>hearth viewer</title>")},
	"viewer.js":              {Data: []byte("export {};")},
	"novnc/core/rfb.js":      {Data: []byte("export default class RFB {}")},
	"novnc/vendor/pako.js":   {Data: []byte("export {};")},
	"viewer.css":             {Data: []byte("body{}")},
	"novnc/LICENSE.txt":      {Data: []byte("MPL")},
	"novnc/core/util/int.js": {Data: []byte("export {};")},
	"terminal.html":          {Data: []byte("<!doctype html><title>hearth terminal</title>")},
	"terminal.js":            {Data: []byte("export {};")},
	"xterm/xterm.mjs":        {Data: []byte("export class Terminal {}")},
}

// fakeVNC is a loopback server that greets like an RFB server, echoes what
// it gets and counts the connections it accepted.
type fakeVNC struct {
	ln      net.Listener
	accepts atomic.Int32
}

func newFakeVNC(t *testing.T) *fakeVNC {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVNC{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.accepts.Add(1)
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return f
}

func (f *fakeVNC) addr() string { return f.ln.Addr().String() }

// viewerLink is a viewer link as the API answers it.
type viewerLink = v1.Viewer

// pageToken is the page token in a viewer link's URL fragment.
func pageToken(t *testing.T, link string) string {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := strings.CutPrefix(u.Fragment, "token=")
	if !ok || tok == "" {
		t.Fatalf("viewer url %q carries no token in its fragment", link)
	}
	return tok
}

func (f *fixture) viewerLink(id, body string) viewerLink {
	f.t.Helper()
	a := f.do("POST", "/v1/vms/"+id+"/viewer", f.alice, body)
	if a.status != http.StatusCreated {
		f.t.Fatalf("create viewer: %d %s", a.status, a.body)
	}
	var l viewerLink
	a.json(f.t, &l)
	return l
}

// dialViewer opens a viewer socket as a browser on hearth's own origin
// would, and reads the RFB greeting.
func dialViewer(t *testing.T, wsURL string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{"binary"}, HTTPHeader: hdr})
	if err == nil {
		t.Cleanup(func() { ws.CloseNow() })
	}
	return ws, resp, err
}

func closeCode(t *testing.T, ws *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for {
		if _, _, err := ws.Read(ctx); err != nil {
			var ce websocket.CloseError
			if ok := asClose(err, &ce); ok {
				return ce.Code, ce.Reason
			}
			t.Fatalf("viewer ended without a close frame: %v", err)
		}
	}
}

func asClose(err error, ce *websocket.CloseError) bool { return errors.As(err, ce) }

// The whole path: a link for a ready browser VM, its socket reaching the
// guest's VNC server, the viewer listed on the VM, and closed with "vm
// destroyed" (4000) when the VM is deleted.
func TestViewerLinkOpenListAndCloseOnDelete(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	l := f.viewerLink(id, "")
	if !strings.HasPrefix(l.URL, f.srv.URL+"/viewer/"+id+"#token=") {
		t.Fatalf("url = %q", l.URL)
	}
	wsBase := "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/v1/vms/" + id + "/viewer/socket?token="
	if !strings.HasPrefix(l.WebsocketURL, wsBase) {
		t.Fatalf("websocket_url = %q, want prefix %q", l.WebsocketURL, wsBase)
	}
	if d := time.Until(l.ExpiresAt); d < 14*time.Minute || d > 15*time.Minute {
		t.Fatalf("expires_at in %s, want the default 15m", d)
	}
	ws, _, err := dialViewer(t, l.WebsocketURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Subprotocol() != "binary" {
		t.Fatalf("subprotocol %q", ws.Subprotocol())
	}
	_, greet, err := ws.Read(t.Context())
	if err != nil || string(greet) != "RFB 003.008\n" {
		t.Fatalf("greeting %q, %v", greet, err)
	}

	var got struct {
		Viewers []struct {
			ID       string `json:"id"`
			ViewOnly bool   `json:"view_only"`
		} `json:"viewers"`
	}
	f.do("GET", "/v1/vms/"+id, f.alice, "").json(t, &got)
	if len(got.Viewers) != 1 || !strings.HasPrefix(got.Viewers[0].ID, "vwr_") {
		t.Fatalf("viewers = %+v, want the open one", got.Viewers)
	}

	if a := f.do("DELETE", "/v1/vms/"+id, f.alice, ""); a.status != http.StatusAccepted {
		t.Fatalf("delete: %d", a.status)
	}
	if code, reason := closeCode(t, ws); code != 4000 || reason != "vm destroyed" {
		t.Fatalf("close %d %q, want 4000 vm destroyed", code, reason)
	}
	// The bridge unregisters just after it sent the close frame.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got.Viewers = nil
		f.do("GET", "/v1/vms/"+id, f.alice, "").json(t, &got)
		if len(got.Viewers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("viewers after delete = %+v", got.Viewers)
		}
	}
	// The same socket URL again: refused without reaching the guest.
	before := f.vnc.accepts.Load()
	ws2, _, err := dialViewer(t, l.WebsocketURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := closeCode(t, ws2); code != 4007 && code != 4000 {
		t.Fatalf("replayed socket url closed with %d", code)
	}
	if f.vnc.accepts.Load() != before {
		t.Fatal("a refused viewer reached the guest")
	}
}

func TestViewerLinkRefusals(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	mini := f.createVM(f.alice, `{"image":"minimal"}`)
	tests := []struct {
		name, path, key, body string
		status                int
		code, msg             string
	}{
		{"not a screen", "/v1/vms/" + mini.ID + "/viewer", f.alice, "", 409, "conflict", "serves no VNC screen"},
		{"another user's vm", "/v1/vms/" + id + "/viewer", f.bob, "", 404, "not_found", "not found"},
		{"unknown vm", "/v1/vms/nosuch/viewer", f.alice, "", 404, "not_found", "not found"},
		{"negative ttl", "/v1/vms/" + id + "/viewer", f.alice, `{"ttl_seconds":-5}`, 400, "invalid_argument", `"ttl_seconds" must be at least 1`},
		{"ttl over the maximum", "/v1/vms/" + id + "/viewer", f.alice, `{"ttl_seconds":7200}`, 400, "invalid_argument", `"ttl_seconds" must be between 1 and 3600`},
		{"unknown field", "/v1/vms/" + id + "/viewer", f.alice, `{"viewonly":true}`, 400, "invalid_argument", `unknown field "viewonly"`},
		{"wrong type", "/v1/vms/" + id + "/viewer", f.alice, `{"view_only":"yes"}`, 400, "invalid_argument", "view_only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := f.do("POST", tt.path, tt.key, tt.body)
			if a.status != tt.status || a.errCode() != tt.code || !strings.Contains(a.errMessage(), tt.msg) {
				t.Fatalf("%d %s, want %d %s containing %q", a.status, a.body, tt.status, tt.code, tt.msg)
			}
		})
	}
	// View-only with a chosen lifetime.
	l := f.viewerLink(id, `{"view_only":true,"ttl_seconds":60}`)
	if !l.ViewOnly || time.Until(l.ExpiresAt) > time.Minute {
		t.Fatalf("link %+v", l)
	}
	if n := f.vnc.accepts.Load(); n != 0 {
		t.Fatalf("refused requests made %d guest connections", n)
	}
}

// ticket asks f's API for a ticket for vm id with auth as the
// Authorization header ("" for none).
func (f *fixture) ticket(id, auth string) answer {
	f.t.Helper()
	hdr := http.Header{}
	if auth != "" {
		hdr.Set("Authorization", auth)
	}
	return f.ticketAt(f.srv.URL, id, hdr)
}

// ticketAt asks the API at base for a ticket for vm id with hdr.
func (f *fixture) ticketAt(base, id string, hdr http.Header) answer {
	f.t.Helper()
	return f.request("POST", base, "/v1/vms/"+id+"/viewer/ticket", hdr, "")
}

// The page trades its token for single-use socket URLs, as often as it
// reconnects, until the link expires.
func TestViewerTicket(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	l := f.viewerLink(id, "")
	page := pageToken(t, l.URL)
	for i := range 2 {
		a := f.ticket(id, "Bearer "+page)
		if a.status != 200 {
			t.Fatalf("ticket %d: %d %s", i, a.status, a.body)
		}
		var tk v1.ViewerTicket
		a.json(t, &tk)
		ws, _, err := dialViewer(t, tk.WebsocketURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, greet, err := ws.Read(t.Context()); err != nil || string(greet) != "RFB 003.008\n" {
			t.Fatalf("ticket %d: greeting %q %v", i, greet, err)
		}
		ws.Close(websocket.StatusNormalClosure, "")
	}
	for name, tc := range map[string]struct {
		id, auth, code string
	}{
		"no token":            {id, "", "invalid_token"},
		"garbage":             {id, "Bearer nonsense", "invalid_token"},
		"socket token":        {id, "Bearer " + strings.SplitN(l.WebsocketURL, "token=", 2)[1], "invalid_token"},
		"another vm":          {"vm-other", "Bearer " + page, "invalid_token"},
		"api key is no token": {id, "Bearer " + f.alice, "invalid_token"},
	} {
		if a := f.ticket(tc.id, tc.auth); a.status != 401 || a.errCode() != tc.code {
			t.Errorf("%s: %d %s, want 401 %s", name, a.status, a.body, tc.code)
		}
	}
	short := f.viewerLink(id, `{"ttl_seconds":1}`)
	time.Sleep(time.Until(short.ExpiresAt) + 50*time.Millisecond)
	if a := f.ticket(id, "Bearer "+pageToken(t, short.URL)); a.status != 401 || a.errCode() != "token_expired" || !strings.Contains(a.errMessage(), "expired") {
		t.Fatalf("expired link: %d %s", a.status, a.body)
	}
	// A destroyed VM's page learns that it is gone.
	f.do("DELETE", "/v1/vms/"+id, f.alice, "")
	f.do("GET", "/v1/vms/"+id+"/wait?state=destroyed", f.alice, "")
	if a := f.ticket(id, "Bearer "+page); a.status != 404 {
		t.Fatalf("ticket for a destroyed vm: %d %s", a.status, a.body)
	}
}

func TestViewerPageAndAssets(t *testing.T) {
	f := newFixture(t)
	a := f.do("GET", "/viewer/some-vm", "", "")
	if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %v", a.status, a.header)
	}
	csp := a.header.Get("Content-Security-Policy")
	host := strings.TrimPrefix(f.srv.URL, "http://")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self' ws://" + host, "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if a.header.Get("Referrer-Policy") != "no-referrer" || a.header.Get("Cache-Control") != "no-store" {
		t.Errorf("page headers %v", a.header)
	}
	for path, ctype := range map[string]string{
		"/viewer/assets/viewer.js":         "text/javascript",
		"/viewer/assets/novnc/core/rfb.js": "text/javascript",
		"/viewer/assets/viewer.css":        "text/css",
	} {
		a := f.do("GET", path, "", "")
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), ctype) || a.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %d %v", path, a.status, a.header)
		}
	}
	for _, path := range []string{"/viewer/assets/nope.js", "/viewer/assets/novnc/core", "/viewer/assets/novnc/core/"} {
		if a := f.do("GET", path, "", ""); a.status != 404 || a.errCode() != "not_found" {
			t.Errorf("%s: %d %s", path, a.status, a.body)
		}
	}
	// Unbuilt assets are a clear 503, not a blank page.
	unbuilt := f.variant(func(a *api.Server) { a.ViewerOptions.AssetsErr = io.ErrUnexpectedEOF })
	if a := f.request("GET", unbuilt, "/viewer/x", nil, ""); a.status != 503 || !strings.Contains(string(a.body), "viewer page is not available") {
		t.Fatalf("unbuilt assets: %d %s", a.status, a.body)
	}
}

// Links follow the configured public URL, or forwarded headers when (and
// only when) they are trusted; browser origins elsewhere are refused.
func TestViewerLinksBehindAProxy(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	pub, _ := url.Parse("https://hearth.example.com/base")
	proxied := http.Header{
		"X-Forwarded-Proto":  {"https"},
		"X-Forwarded-Host":   {"viewer.example.net"},
		"X-Forwarded-Prefix": {"/h/"},
	}
	tests := []struct {
		name    string
		opts    func(*api.ViewerOptions)
		hdr     http.Header
		page    string
		wsStart string
	}{
		{"direct", func(*api.ViewerOptions) {}, proxied, "http://HOST/viewer/", "ws://HOST/v1/vms/"},
		{"public url", func(o *api.ViewerOptions) { o.PublicURL = pub }, proxied,
			"https://hearth.example.com/base/viewer/", "wss://hearth.example.com/base/v1/vms/"},
		{"trusted proxy", func(o *api.ViewerOptions) { o.TrustForwarded = true }, proxied,
			"https://viewer.example.net/h/viewer/", "wss://viewer.example.net/h/v1/vms/"},
		{"trusted Forwarded header", func(o *api.ViewerOptions) { o.TrustForwarded = true },
			http.Header{"Forwarded": {`for=192.0.2.1;proto=https;host="fw.example.org:8443", for=10.0.0.1`}},
			"https://fw.example.org:8443/viewer/", "wss://fw.example.org:8443/v1/vms/"},
		{"trusted but bogus host", func(o *api.ViewerOptions) { o.TrustForwarded = true },
			http.Header{"X-Forwarded-Host": {"evil.example/x@y"}, "X-Forwarded-Proto": {"gopher"}},
			"http://HOST/viewer/", "ws://HOST/v1/vms/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := f.variant(func(a *api.Server) { tt.opts(&a.ViewerOptions) })
			hdr := tt.hdr.Clone()
			hdr.Set("Authorization", "Bearer "+f.alice)
			a := f.request("POST", base, "/v1/vms/"+id+"/viewer", hdr, "")
			host := strings.TrimPrefix(base, "http://")
			page := strings.ReplaceAll(tt.page, "HOST", host) + id + "#token="
			ws := strings.ReplaceAll(tt.wsStart, "HOST", host) + id + "/viewer/socket?token="
			if a.status != 201 || !strings.Contains(string(a.body), `"url": "`+page) || !strings.Contains(string(a.body), `"websocket_url": "`+ws) {
				t.Fatalf("%d %s\nwant url %s… and websocket_url %s…", a.status, a.body, page, ws)
			}
		})
	}

	// A page on another origin cannot open a viewer socket.
	l := f.viewerLink(id, "")
	before := f.vnc.accepts.Load()
	_, resp, err := dialViewer(t, l.WebsocketURL, http.Header{"Origin": {"https://evil.example"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: %v %v", resp, err)
	}
	// Hearth's own origin can, with the same (still unused) socket URL.
	ws, _, err := dialViewer(t, l.WebsocketURL, http.Header{"Origin": {f.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	if _, greet, err := ws.Read(t.Context()); err != nil || string(greet) != "RFB 003.008\n" {
		t.Fatalf("greeting %q %v", greet, err)
	}
	if f.vnc.accepts.Load() != before+1 {
		t.Fatal("the refused origin reached the guest")
	}
}
