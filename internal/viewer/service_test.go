package viewer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// memEpochs keeps viewer epochs in memory, standing in for the store
// (which has its own conformance tests); one instance shared by two
// Services is a store that survived a restart.
type memEpochs struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (e *memEpochs) ViewerEpoch(_ context.Context, vmID string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[vmID], nil
}

func (e *memEpochs) BumpViewerEpoch(_ context.Context, vmID string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]uint64{}
	}
	e.m[vmID]++
	return e.m[vmID], nil
}

// serviceHarness is a Service behind an httptest server whose socket route
// is /socket/{vm}?token=..., resolving every VM to one address unless a
// per-VM error is set.
type serviceHarness struct {
	svc      *Service
	epochs   *memEpochs
	srv      *httptest.Server
	resolved atomic.Int32
	errs     map[string]error
}

func newServiceHarness(t *testing.T, vncAddr string, cfg Config) *serviceHarness {
	t.Helper()
	return newServiceHarnessWith(t, vncAddr, cfg, &memEpochs{})
}

// newServiceHarnessWith is newServiceHarness with the epochs of an
// earlier one: the same daemon after a restart.
func newServiceHarnessWith(t *testing.T, vncAddr string, cfg Config, epochs *memEpochs) *serviceHarness {
	t.Helper()
	h := &serviceHarness{errs: map[string]error{}, epochs: epochs}
	h.svc = NewService(cfg, testSigner(t), epochs, func(ctx context.Context, vmID string) (string, error) {
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

// ticket buys a socket token with a page token, as the page does.
func (h *serviceHarness) ticket(t *testing.T, vmID, page string) string {
	t.Helper()
	tok, _, err := h.svc.Ticket(t.Context(), page, vmID, "192.0.2.1")
	if err != nil {
		t.Fatalf("ticket: %v", err)
	}
	return tok
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
	g, err := h.svc.Issue(t.Context(), vmID, o)
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
	g := h.issue(t, "vm-1", IssueOptions{})
	good, err := h.svc.signer.Verify(g.SocketToken, "vm-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Sign(good)
	c := good
	c.Expires, c.LinkExpires = time.Now().Add(-time.Second), time.Now().Add(-time.Second)
	expired, _ := h.svc.signer.Sign(c)
	c = good
	c.Instance = "another daemon"
	foreign, _ := h.svc.signer.Sign(c)
	tests := []struct {
		name, vm, token string
		want            CloseReason
	}{
		{"forged", "vm-1", forged, ReasonInvalidToken},
		{"expired", "vm-1", expired, ReasonTokenExpired},
		{"issued by another daemon", "vm-1", foreign, ReasonSocketExpired},
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
		tok, c, err := h.svc.Ticket(t.Context(), g.PageToken, "vm-1", "192.0.2.1")
		if err != nil {
			t.Fatal(err)
		}
		if c.Kind != KindSocket || !c.ViewOnly || c.Session != "ls_1" || !c.LinkExpires.Equal(g.Expires) ||
			c.Expires.After(time.Now().Add(DefaultSocketTTL+time.Second)) {
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
	if _, _, err := h.svc.Ticket(t.Context(), g.SocketToken, "vm-1", ""); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("socket token as page token: %v", err)
	}
	if _, _, err := h.svc.Ticket(t.Context(), g.PageToken, "vm-2", ""); !errors.Is(err, ErrWrongVM) {
		t.Fatalf("other vm: %v", err)
	}
	h.svc.now = func() time.Time { return g.Expires.Add(time.Second) }
	if _, _, err := h.svc.Ticket(t.Context(), g.PageToken, "vm-1", ""); !errors.Is(err, ErrExpired) {
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

// openViewer dials a viewer with token and waits until vmID has want open.
func (h *serviceHarness) openViewer(t *testing.T, vmID, token string, want int) *websocket.Conn {
	t.Helper()
	ws := h.dial(t, vmID, token)
	waitFor(t, func() bool { return len(h.svc.Open(vmID)) == want })
	return ws
}

// refused dials a viewer with token and checks that it is closed with want
// without the guest being looked up.
func (h *serviceHarness) refused(t *testing.T, vmID, token string, want CloseReason) {
	t.Helper()
	before := h.resolved.Load()
	if ce := closeOf(t, h.dial(t, vmID, token), 5*time.Second); ce.Code != want.Code || ce.Reason != want.Text {
		t.Fatalf("close = %d %q, want %v", ce.Code, ce.Reason, want)
	}
	if h.resolved.Load() != before {
		t.Fatal("a refused viewer looked the guest up")
	}
}

// Viewers are capped per link and per VM: the one over a cap is refused
// with the reason (at the socket, and at the ticket that would buy it),
// and a viewer that closes frees its slot.
func TestServiceCaps(t *testing.T) {
	addr, _ := echoServer(t)
	h := newServiceHarness(t, addr, Config{MaxPerLink: 2, MaxPerVM: 3})
	a := h.issue(t, "vm-1", IssueOptions{})
	// Three socket tokens, bought while the link had room.
	toks := []string{a.SocketToken, h.ticket(t, "vm-1", a.PageToken), h.ticket(t, "vm-1", a.PageToken)}
	first := h.openViewer(t, "vm-1", toks[0], 1)
	h.openViewer(t, "vm-1", toks[1], 2)
	h.refused(t, "vm-1", toks[2], ReasonLinkFull)
	if _, _, err := h.svc.Ticket(t.Context(), a.PageToken, "vm-1", "192.0.2.1"); !errors.Is(err, ErrLinkFull) ||
		err.Error() != "this viewer link already has 2 open viewers, the most allowed" {
		t.Fatalf("ticket on a full link: %v", err)
	}

	// Another link takes the VM's last slot; a third link finds it full.
	b := h.issue(t, "vm-1", IssueOptions{})
	h.openViewer(t, "vm-1", b.SocketToken, 3)
	c := h.issue(t, "vm-1", IssueOptions{})
	h.refused(t, "vm-1", c.SocketToken, ReasonVMFull)
	if _, _, err := h.svc.Ticket(t.Context(), c.PageToken, "vm-1", "192.0.2.1"); !errors.Is(err, ErrVMFull) {
		t.Fatalf("ticket on a full vm: %v", err)
	}
	// Other VMs have slots of their own.
	h.openViewer(t, "vm-2", h.issue(t, "vm-2", IssueOptions{}).SocketToken, 1)

	// A viewer that closes frees its slot, for any link of the VM.
	first.Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 2 })
	h.openViewer(t, "vm-1", h.ticket(t, "vm-1", c.PageToken), 3)
}

// Ticket exchange is rate-limited per link and per client address, with
// the time to wait; idle clients are forgotten.
func TestServiceTicketRateLimit(t *testing.T) {
	h := newServiceHarness(t, "127.0.0.1:1", Config{TicketsPerLink: 3, TicketsPerClient: 5})
	now := time.Now()
	h.svc.now = func() time.Time { return now }
	g := h.issue(t, "vm-1", IssueOptions{TTL: time.Hour})
	ticket := func(page, client string) error {
		_, _, err := h.svc.Ticket(t.Context(), page, "vm-1", client)
		return err
	}
	for i := range 3 { // each from its own address: only the link's limit counts
		if err := ticket(g.PageToken, fmt.Sprintf("192.0.2.%d:4000", i)); err != nil {
			t.Fatalf("ticket %d: %v", i, err)
		}
	}
	var rl *RateLimitError
	if err := ticket(g.PageToken, "192.0.2.9:4000"); !errors.As(err, &rl) || !errors.Is(err, ErrRateLimited) ||
		rl.What != "link" || rl.RetryAfter < time.Second || rl.RetryAfter > 20*time.Second {
		t.Fatalf("fourth ticket of the link: %v", err)
	}
	if err := ticket(h.issue(t, "vm-1", IssueOptions{}).PageToken, "192.0.2.9:4000"); err != nil {
		t.Fatalf("another link: %v", err)
	}
	now = now.Add(rl.RetryAfter)
	if err := ticket(g.PageToken, "192.0.2.10:4000"); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}

	// A client's attempts count whether or not their tokens are good.
	for i := range 5 {
		if err := ticket("forged", "198.51.100.7:5000"); !errors.Is(err, ErrMalformed) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if err := ticket(g.PageToken, "198.51.100.7:5001"); !errors.As(err, &rl) || rl.What != "client" {
		t.Fatalf("sixth attempt of the client: %v", err)
	}
	// An IPv6 client is its /64.
	for i := range 5 {
		if err := ticket("forged", fmt.Sprintf("[2001:db8::%d]:443", i+1)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("ipv6 attempt %d: %v", i, err)
		}
	}
	if err := ticket("forged", "[2001:db8::99]:443"); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("same /64: %v", err)
	}
	if err := ticket("forged", "[2001:db8:0:1::1]:443"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("another /64: %v", err)
	}
	// Clients idle long enough to be full again are forgotten.
	if n := h.svc.clientTickets.Len(); n < 3 {
		t.Fatalf("%d clients tracked, want the recent ones", n)
	}
	now = now.Add(2 * time.Minute)
	if err := ticket("forged", "203.0.113.1:1"); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
	if n := h.svc.clientTickets.Len(); n != 1 {
		t.Fatalf("%d clients tracked after two idle minutes, want 1", n)
	}
}

// Revoking a VM's viewers closes its open viewers with the reason and
// refuses every page and socket token issued for it before, also after a
// restart; other VMs' tokens and new links keep working.
func TestServiceRevoke(t *testing.T) {
	addr, _ := echoServer(t)
	h := newServiceHarness(t, addr, Config{})
	g1 := h.issue(t, "vm-1", IssueOptions{})
	g2 := h.issue(t, "vm-2", IssueOptions{})
	open1 := h.dial(t, "vm-1", g1.SocketToken)
	h.openViewer(t, "vm-2", g2.SocketToken, 1)
	waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 1 })
	spare := h.issue(t, "vm-1", IssueOptions{}) // never used: revoked too
	bought := h.ticket(t, "vm-1", g1.PageToken)

	if n, err := h.svc.RevokeVM(t.Context(), "vm-1"); err != nil || n != 1 {
		t.Fatalf("RevokeVM = %d, %v; want 1 closed", n, err)
	}
	if ce := closeOf(t, open1, 5*time.Second); ce.Code != ReasonRevoked.Code || ce.Reason != ReasonRevoked.Text {
		t.Fatalf("open viewer closed with %v, want %v", ce, ReasonRevoked)
	}
	waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 0 })
	for _, tok := range []string{spare.SocketToken, bought} {
		h.refused(t, "vm-1", tok, ReasonRevoked)
	}
	for _, page := range []string{g1.PageToken, spare.PageToken} {
		if _, _, err := h.svc.Ticket(t.Context(), page, "vm-1", "192.0.2.1"); !errors.Is(err, ErrRevoked) {
			t.Fatalf("ticket with a revoked link: %v", err)
		}
	}
	// vm-2's viewer and link are untouched.
	if len(h.svc.Open("vm-2")) != 1 {
		t.Fatal("another vm's viewer was closed")
	}
	h.openViewer(t, "vm-2", h.ticket(t, "vm-2", g2.PageToken), 2)
	// A link issued after the revocation works.
	fresh := h.issue(t, "vm-1", IssueOptions{})
	h.openViewer(t, "vm-1", h.ticket(t, "vm-1", fresh.PageToken), 1)

	// After a restart (same key, same store) the revoked links stay
	// revoked and the fresh one still works.
	h2 := newServiceHarnessWith(t, addr, Config{}, h.epochs)
	if _, _, err := h2.svc.Ticket(t.Context(), g1.PageToken, "vm-1", "192.0.2.1"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked link after a restart: %v", err)
	}
	h2.openViewer(t, "vm-1", h2.ticket(t, "vm-1", fresh.PageToken), 1)
}

// A viewer that read the epoch just before a revocation is refused when
// it registers: the revocation is in memory before the store is read again.
func TestServiceRevokeRacingViewer(t *testing.T) {
	addr, _ := echoServer(t)
	h := newServiceHarness(t, addr, Config{})
	g := h.issue(t, "vm-1", IssueOptions{})
	c, err := h.svc.admit(t.Context(), g.SocketToken, "vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.RevokeVM(t.Context(), "vm-1"); err != nil {
		t.Fatal(err)
	}
	v := &openViewer{closer: NewCloser(), link: c.Link, epoch: c.Epoch, info: Info{ID: "vwr_x", VMID: "vm-1"}}
	if err := h.svc.register(v); !errors.Is(err, ErrRevoked) {
		t.Fatalf("register after revoke: %v", err)
	}
}

// Socket tokens live seconds, not the link's hours; a used one cannot be
// used again, and none outlives the daemon that issued it: after a restart
// (a new Service with the same key and store) both a used and an unused
// one are refused without reaching the guest, and the page buys new ones.
func TestServiceSocketTokens(t *testing.T) {
	addr, _ := echoServer(t)
	h := newServiceHarness(t, addr, Config{})
	g := h.issue(t, "vm-1", IssueOptions{TTL: time.Hour})
	bought := h.ticket(t, "vm-1", g.PageToken)
	for _, tok := range []string{g.SocketToken, bought} {
		c, err := h.svc.signer.Verify(tok, "vm-1", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(c.Expires); left > DefaultSocketTTL+time.Second || left < DefaultSocketTTL-2*time.Second {
			t.Fatalf("socket token lives %v, want %v", left, DefaultSocketTTL)
		}
		if !c.LinkEnd().Equal(g.Expires) {
			t.Fatalf("socket token's link ends %v, want %v", c.LinkEnd(), g.Expires)
		}
	}
	if !g.SocketExpires.Before(g.Expires) {
		t.Fatalf("grant's socket token expires %v, its link %v", g.SocketExpires, g.Expires)
	}

	ws := h.openViewer(t, "vm-1", g.SocketToken, 1)
	ws.Close(websocket.StatusNormalClosure, "")
	waitFor(t, func() bool { return len(h.svc.Open("vm-1")) == 0 })
	h.refused(t, "vm-1", g.SocketToken, ReasonInvalidToken) // replayed

	// Past its seconds, a socket token is refused; its page is still good.
	h.svc.now = func() time.Time { return time.Now().Add(DefaultSocketTTL + 2*time.Second) }
	h.refused(t, "vm-1", bought, ReasonSocketExpired)
	h.svc.now = time.Now

	unused := h.ticket(t, "vm-1", g.PageToken)
	h2 := newServiceHarnessWith(t, addr, Config{}, h.epochs)
	h2.refused(t, "vm-1", g.SocketToken, ReasonSocketExpired) // used before the restart
	h2.refused(t, "vm-1", unused, ReasonSocketExpired)
	if n := h2.resolved.Load(); n != 0 {
		t.Fatalf("the restarted service looked the guest up %d times for old tokens", n)
	}
	h2.openViewer(t, "vm-1", h2.ticket(t, "vm-1", g.PageToken), 1)
}
