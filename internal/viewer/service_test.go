package viewer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// serviceHarness is a Service behind an httptest server whose socket route
// is /socket/{vm}?token=..., resolving every VM to one address unless a
// per-VM error is set.
type serviceHarness struct {
	svc      *Service
	srv      *httptest.Server
	resolved atomic.Int32
	errs     map[string]error
}

func newServiceHarness(t *testing.T, vncAddr string, cfg Config) *serviceHarness {
	t.Helper()
	h := &serviceHarness{errs: map[string]error{}}
	h.svc = NewService(cfg, testSigner(t), func(ctx context.Context, vmID string) (string, error) {
		h.resolved.Add(1)
		if err := h.errs[vmID]; err != nil {
			return "", err
		}
		return vncAddr, nil
	}, slog.New(slog.DiscardHandler))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /socket/{vm}", func(w http.ResponseWriter, r *http.Request) {
		h.svc.ServeSocket(w, r, r.PathValue("vm"), r.URL.Query().Get("token"), nil)
	})
	h.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.svc.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		h.srv.Close()
	})
	return h
}

func (h *serviceHarness) dial(t *testing.T, vmID, token string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(h.srv.URL, "http") + "/socket/" + vmID + "?token=" + token
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: []string{Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func (h *serviceHarness) issue(t *testing.T, vmID string, o IssueOptions) Grant {
	t.Helper()
	if o.TTL == 0 {
		o.TTL = time.Minute
	}
	g, err := h.svc.Issue(vmID, o)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// A viewer opened with a socket token reaches the real VNC server, is
// listed while open, and is closed with "vm destroyed" when the VM goes.
func TestServiceViewerLifecycle(t *testing.T) {
	vnc := startVNC(t)
	h := newServiceHarness(t, vnc, Config{PingInterval: time.Second})
	g := h.issue(t, "vm-1", IssueOptions{})
	ws := h.dial(t, "vm-1", g.SocketToken)
	c := newRFBConn(t, ws)
	if w, hh, err := rfbHandshake(c); err != nil || w != screenW || hh != screenH {
		t.Fatalf("handshake: %dx%d %v", w, hh, err)
	}
	if err := requestUpdate(c); err != nil {
		t.Fatal(err)
	}
	open := h.svc.Open("vm-1")
	if len(open) != 1 || open[0].VMID != "vm-1" || open[0].ViewOnly || !strings.HasPrefix(open[0].ID, "vwr_") {
		t.Fatalf("open viewers = %+v", open)
	}
	if n := h.svc.CloseVM("vm-1", ReasonVMDestroyed, time.Minute); n != 1 {
		t.Fatalf("CloseVM closed %d viewers, want 1", n)
	}
	// The reader goroutine in newRFBConn owns ws's reads; the pipe ends
	// with the close error.
	_, err := io.ReadAll(c)
	if websocket.CloseStatus(err) != ReasonVMDestroyed.Code {
		t.Fatalf("viewer ended with %v, want close %d", err, ReasonVMDestroyed.Code)
	}
	waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 0 })

	// A second grant for the destroyed VM is refused at once, without
	// looking the guest up.
	before := h.resolved.Load()
	g2 := h.issue(t, "vm-1", IssueOptions{})
	if ce := closeOf(t, h.dial(t, "vm-1", g2.SocketToken), 5*time.Second); ce.Code != ReasonVMDestroyed.Code {
		t.Fatalf("close = %v, want vm destroyed", ce)
	}
	if h.resolved.Load() != before {
		t.Fatal("a viewer of a destroyed vm looked the guest up")
	}
}

// Refused tokens get a close frame with the reason and never reach the
// guest.
func TestServiceRefusals(t *testing.T) {
	a := newAcceptCounter(t)
	h := newServiceHarness(t, a.ln.Addr().String(), Config{})
	other, err := NewSigner([]byte("another key that is long enough!!"))
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Sign(Claims{VMID: "vm-1", Expires: time.Now().Add(time.Minute)})
	expired, _ := h.svc.signer.Sign(Claims{VMID: "vm-1", Expires: time.Now().Add(-time.Second)})
	g := h.issue(t, "vm-1", IssueOptions{})
	tests := []struct {
		name, vm, token string
		want            CloseReason
	}{
		{"forged", "vm-1", forged, ReasonInvalidToken},
		{"expired", "vm-1", expired, ReasonTokenExpired},
		{"wrong vm", "vm-2", g.SocketToken, ReasonInvalidToken},
		{"page token", "vm-1", g.PageToken, ReasonInvalidToken},
		{"empty", "vm-1", "", ReasonInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ce := closeOf(t, h.dial(t, tt.vm, tt.token), 5*time.Second)
			if ce.Code != tt.want.Code || ce.Reason != tt.want.Text {
				t.Fatalf("close = %v, want %v", ce, tt.want)
			}
		})
	}
	if n, r := a.accepts.Load(), h.resolved.Load(); n != 0 || r != 0 {
		t.Fatalf("refused tokens: %d guest connections, %d lookups; want none", n, r)
	}
	// The good token works once (the counter hangs up: vnc closed) and
	// is refused when replayed after that viewer closed.
	if ce := closeOf(t, h.dial(t, "vm-1", g.SocketToken), 5*time.Second); ce.Code != ReasonVNCClosed.Code {
		t.Fatalf("first use: close = %v, want %v", ce, ReasonVNCClosed)
	}
	if ce := closeOf(t, h.dial(t, "vm-1", g.SocketToken), 5*time.Second); ce.Code != ReasonInvalidToken.Code {
		t.Fatalf("replay: close = %v, want %v", ce, ReasonInvalidToken)
	}
	if n := a.accepts.Load(); n != 1 {
		t.Fatalf("guest connections = %d, want 1", n)
	}
}

// The guest's state decides the reason when the lookup fails.
func TestServiceResolveErrors(t *testing.T) {
	h := newServiceHarness(t, "127.0.0.1:1", Config{})
	h.errs["gone"] = errdefs.NotFoundf("vm gone not found")
	h.errs["booting"] = errdefs.Conflictf("vm booting is booting, not ready")
	for vm, want := range map[string]CloseReason{"gone": ReasonVMDestroyed, "booting": ReasonVNCUnreachable, "unreachable": ReasonVNCUnreachable} {
		g := h.issue(t, vm, IssueOptions{})
		if ce := closeOf(t, h.dial(t, vm, g.SocketToken), 5*time.Second); ce.Code != want.Code {
			t.Fatalf("%s: close = %v, want %v", vm, ce, want)
		}
		if len(h.svc.Open(vm)) != 0 {
			t.Fatalf("%s: refused viewer still listed", vm)
		}
	}
}

// A page token buys socket tokens until it expires; socket tokens cannot
// buy more.
func TestServiceTicket(t *testing.T) {
	vnc := startVNC(t)
	h := newServiceHarness(t, vnc, Config{})
	g := h.issue(t, "vm-1", IssueOptions{ViewOnly: true, Session: "ls_1"})
	for i := range 2 { // reconnects: each ticket opens one viewer
		tok, c, err := h.svc.Ticket(g.PageToken, "vm-1")
		if err != nil {
			t.Fatal(err)
		}
		if c.Kind != KindSocket || !c.ViewOnly || c.Session != "ls_1" || !c.Expires.Equal(g.Expires) {
			t.Fatalf("ticket claims = %+v", c)
		}
		ws := h.dial(t, "vm-1", tok)
		cn := newRFBConn(t, ws)
		if _, _, err := rfbHandshake(cn); err != nil {
			t.Fatalf("viewer %d: %v", i, err)
		}
		if o := h.svc.Open("vm-1"); len(o) != 1 || !o[0].ViewOnly || o[0].Session != "ls_1" {
			t.Fatalf("open = %+v", o)
		}
		ws.Close(websocket.StatusNormalClosure, "")
		waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 0 })
	}
	if _, _, err := h.svc.Ticket(g.SocketToken, "vm-1"); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("socket token as page token: %v", err)
	}
	if _, _, err := h.svc.Ticket(g.PageToken, "vm-2"); !errors.Is(err, ErrWrongVM) {
		t.Fatalf("other vm: %v", err)
	}
	h.svc.now = func() time.Time { return g.Expires.Add(time.Second) }
	if _, _, err := h.svc.Ticket(g.PageToken, "vm-1"); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired page token: %v", err)
	}
}

// Shutdown closes open viewers with "going away" and waits for them.
func TestServiceShutdown(t *testing.T) {
	vnc := startVNC(t)
	h := newServiceHarness(t, vnc, Config{})
	ws := h.dial(t, "vm-1", h.issue(t, "vm-1", IssueOptions{}).SocketToken)
	c := newRFBConn(t, ws)
	if _, _, err := rfbHandshake(c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := h.svc.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// NetConn turns a 1000 or 1001 close into EOF; the bridge never sends
	// 1000 on its own, so a clean end here is the server's 1001.
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("viewer ended with %v, want going away", err)
	}
	if h.svc.Count() != 0 {
		t.Fatal("viewers still registered after shutdown")
	}
}
