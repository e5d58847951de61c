package api_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/viewer"
)

// withViewerService serves f's API with a viewer service of its own,
// configured with cfg, over f's store (its epochs) and VNC fake, and
// returns the server's base URL.
func (f *fixture) withViewerService(cfg viewer.Config, trustForwarded bool) string {
	f.t.Helper()
	signer, err := viewer.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		f.t.Fatal(err)
	}
	cfg.PingInterval = time.Second
	svc := viewer.NewService(cfg, signer, f.st, func(ctx context.Context, id string) (string, error) {
		if _, err := f.mgr.GuestAddr(ctx, id, 5900); err != nil {
			return "", err
		}
		return f.vnc.addr(), nil
	}, f.api.Log)
	f.t.Cleanup(func() { _ = svc.Shutdown(context.Background()) })
	return f.variant(func(a *api.Server) {
		a.Viewers = svc
		a.ViewerOptions.TrustForwarded = trustForwarded
	})
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// openTicket buys a ticket at base with page and opens its socket, reading
// the guest's greeting.
func (f *fixture) openTicket(base, id, page string) *websocket.Conn {
	f.t.Helper()
	a := f.ticketAt(base, id, bearer(page))
	if a.status != 200 {
		f.t.Fatalf("ticket: %d %s", a.status, a.body)
	}
	var tk v1.ViewerTicket
	a.json(f.t, &tk)
	ws, _, err := dialViewer(f.t, tk.WebsocketURL, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, greet, err := ws.Read(f.t.Context()); err != nil || string(greet) != "RFB 003.008\n" {
		f.t.Fatalf("greeting %q %v", greet, err)
	}
	return ws
}

// The owner (or an admin) closes every viewer of a VM and revokes every
// link issued for it: open viewers close with 4013, old page tokens buy no
// ticket (401 link_revoked), old socket URLs are refused without reaching
// the guest, also after a restart; other VMs and new links work.
func TestRevokeViewers(t *testing.T) {
	f := newFixture(t)
	id, other := f.readyVM("browser"), f.readyVM("browser")
	l, lo := f.viewerLink(id, ""), f.viewerLink(other, "")
	ws := f.openTicket(f.srv.URL, id, pageToken(t, l.URL))
	wsOther := f.openTicket(f.srv.URL, other, pageToken(t, lo.URL))
	var spare v1.ViewerTicket
	f.ticket(id, "Bearer "+pageToken(t, l.URL)).json(t, &spare)
	mini := f.createVM(f.alice, `{"image":"minimal"}`)

	for name, tc := range map[string]struct {
		path, key string
		status    int
	}{
		"another user's vm": {"/v1/vms/" + id + "/viewers", f.bob, 404},
		"unknown vm":        {"/v1/vms/nosuch/viewers", f.alice, 404},
		"no screen":         {"/v1/vms/" + mini.ID + "/viewers", f.alice, 409},
		"no key":            {"/v1/vms/" + id + "/viewers", "", 401},
	} {
		if a := f.do("DELETE", tc.path, tc.key, ""); a.status != tc.status {
			t.Errorf("%s: %d %s, want %d", name, a.status, a.body, tc.status)
		}
	}
	if n := f.openViewers(id); n != 1 {
		t.Fatalf("%d viewers open after refused revocations, want 1", n)
	}

	a := f.do("DELETE", "/v1/vms/"+id+"/viewers", f.alice, "")
	if a.status != 200 || !strings.Contains(string(a.body), `"closed": 1`) {
		t.Fatalf("revoke: %d %s", a.status, a.body)
	}
	if code, reason := closeCode(t, ws); code != 4013 || reason != "viewer links revoked" {
		t.Fatalf("open viewer closed with %d %q, want 4013 viewer links revoked", code, reason)
	}
	if a := f.ticket(id, "Bearer "+pageToken(t, l.URL)); a.status != 401 || a.errCode() != "link_revoked" {
		t.Fatalf("ticket with a revoked link: %d %s", a.status, a.body)
	}
	before := f.vnc.accepts.Load()
	for _, u := range []string{spare.WebsocketURL, l.WebsocketURL} {
		w, _, err := dialViewer(t, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code, _ := closeCode(t, w); code != 4013 {
			t.Fatalf("revoked socket url closed with %d, want 4013", code)
		}
	}
	if f.vnc.accepts.Load() != before {
		t.Fatal("a revoked token reached the guest")
	}
	// The other VM's viewer and link are untouched; a new link works.
	if n := f.openViewers(other); n != 1 {
		t.Fatalf("another vm's viewers: %d open, want 1", n)
	}
	_ = wsOther
	f.openTicket(f.srv.URL, other, pageToken(t, lo.URL))
	fresh := f.viewerLink(id, "")
	f.openTicket(f.srv.URL, id, pageToken(t, fresh.URL))
	// An admin may too.
	if a := f.do("DELETE", "/v1/vms/"+id+"/viewers", f.admin, ""); a.status != 200 || !strings.Contains(string(a.body), `"closed": 1`) {
		t.Fatalf("admin revoke: %d %s", a.status, a.body)
	}

	// A restarted daemon (a new viewer service, same key, same store)
	// still refuses the revoked links and honours the new one.
	fresh = f.viewerLink(id, "")
	base := f.withViewerService(viewer.Config{}, false)
	if a := f.ticketAt(base, id, bearer(pageToken(t, l.URL))); a.status != 401 || a.errCode() != "link_revoked" {
		t.Fatalf("revoked link after a restart: %d %s", a.status, a.body)
	}
	f.openTicket(base, id, pageToken(t, fresh.URL))
}

// openViewers is how many viewers the API lists on the VM.
func (f *fixture) openViewers(id string) int {
	f.t.Helper()
	var got struct {
		Viewers []struct{} `json:"viewers"`
	}
	f.do("GET", "/v1/vms/"+id, f.alice, "").json(f.t, &got)
	return len(got.Viewers)
}

// A link or VM with all the viewers it may have: the ticket says so (409
// viewer_limit) and the socket is refused with the reason.
func TestViewerCapsAnswers(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	base := f.withViewerService(viewer.Config{MaxPerLink: 1, MaxPerVM: 2}, false)
	l := f.viewerLink(id, "")
	f.openTicket(base, id, pageToken(t, l.URL))
	a := f.ticketAt(base, id, bearer(pageToken(t, l.URL)))
	if a.status != 409 || a.errCode() != "viewer_limit" || !strings.Contains(a.errMessage(), "link already has 1 open viewers") {
		t.Fatalf("ticket on a full link: %d %s", a.status, a.body)
	}
	// A third link buys a ticket while the VM has room, then a second link
	// takes the room.
	full := f.viewerLink(id, "")
	var early v1.ViewerTicket
	f.ticketAt(base, id, bearer(pageToken(t, full.URL))).json(t, &early)
	f.openTicket(base, id, pageToken(t, f.viewerLink(id, "").URL))
	a = f.ticketAt(base, id, bearer(pageToken(t, full.URL)))
	if a.status != 409 || a.errCode() != "viewer_limit" || !strings.Contains(a.errMessage(), "vm already has 2 open viewers") {
		t.Fatalf("ticket on a full vm: %d %s", a.status, a.body)
	}
	// The early ticket: refused at the socket with the reason.
	ws, _, err := dialViewer(t, early.WebsocketURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, reason := closeCode(t, ws); code != 4012 || reason != "too many viewers on this vm" {
		t.Fatalf("socket on a full vm: %d %q", code, reason)
	}
}

// Ticket exchange answers 429 with Retry-After past a link's or a client's
// rate; the client is the peer, or with trusted forwarded headers the
// address the proxy saw.
func TestViewerTicketRateLimit(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	base := f.withViewerService(viewer.Config{TicketsPerLink: 2, TicketsPerClient: 6}, true)
	l := f.viewerLink(id, "")
	for i := range 2 {
		if a := f.ticketAt(base, id, bearer(pageToken(t, l.URL))); a.status != 200 {
			t.Fatalf("ticket %d: %d %s", i, a.status, a.body)
		}
	}
	a := f.ticketAt(base, id, bearer(pageToken(t, l.URL)))
	retry, err := strconv.Atoi(a.header.Get("Retry-After"))
	if a.status != 429 || a.errCode() != "rate_limited" || !strings.Contains(a.errMessage(), "this link") || err != nil || retry < 1 || retry > 30 {
		t.Fatalf("third ticket of a link: %d %v %s", a.status, a.header, a.body)
	}
	if a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("refused ticket's Cache-Control %q", a.header.Get("Cache-Control"))
	}
	// Per client: three tickets so far came from 127.0.0.1; bad tokens
	// count too.
	fwd := func(addr string) http.Header {
		return http.Header{"Authorization": {"Bearer nonsense"}, "X-Forwarded-For": {"203.0.113.66, " + addr}}
	}
	for i := range 6 {
		if a := f.ticketAt(base, id, fwd("198.51.100.1")); a.status != 401 {
			t.Fatalf("attempt %d: %d %s", i, a.status, a.body)
		}
	}
	if a := f.ticketAt(base, id, fwd("198.51.100.1")); a.status != 429 || !strings.Contains(a.errMessage(), "this client") {
		t.Fatalf("seventh attempt of a client: %d %s", a.status, a.body)
	}
	// The proxy's own address is the last one: a client cannot escape its
	// limit by prepending addresses of its choosing.
	if a := f.ticketAt(base, id, http.Header{"Authorization": {"Bearer nonsense"},
		"X-Forwarded-For": {"192.0.2.77, 198.51.100.1"}}); a.status != 429 {
		t.Fatalf("same client, another claimed origin: %d %s", a.status, a.body)
	}
	if a := f.ticketAt(base, id, fwd("198.51.100.2")); a.status != 401 {
		t.Fatalf("another client: %d %s", a.status, a.body)
	}
}

// Every answer that carries a viewer token says Cache-Control: no-store.
func TestTokenAnswersAreNotCached(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("browser")
	noStore := func(what string, a answer) {
		t.Helper()
		if a.status >= 300 && a.status != http.StatusFound {
			t.Fatalf("%s: %d %s", what, a.status, a.body)
		}
		if got := a.header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", what, got)
		}
	}
	a := f.do("POST", "/v1/vms/"+id+"/viewer", f.alice, "")
	noStore("POST /v1/vms/{id}/viewer", a)
	var l viewerLink
	a.json(t, &l)
	noStore("POST ticket", f.ticket(id, "Bearer "+pageToken(t, l.URL)))

	var lg loginAnswer
	f.do("POST", "/v1/logins", f.alice, `{"provider":"fake_cli"}`).json(t, &lg)
	f.waitLogin(f.alice, lg.ID, "awaiting_user")
	a = f.do("GET", "/v1/logins/"+lg.ID, f.alice, "")
	if !strings.Contains(string(a.body), "#token=") {
		t.Fatalf("login without a viewer link: %s", a.body)
	}
	noStore("GET /v1/logins/{id}", a)
	noStore("POST /v1/logins (the active one)", f.do("POST", "/v1/logins", f.alice, `{"provider":"fake_cli"}`))
	noStore("POST /api/auth/start", f.do("POST", "/api/auth/start", f.alice, `{"provider":"fake_cli"}`))
	noStore("GET /api/auth/session/{id}", f.do("GET", "/api/auth/session/"+lg.ID, f.alice, ""))
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/auth/session/"+lg.ID+"/novnc", nil)
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	noStore("GET /api/auth/session/{id}/novnc", answer{status: resp.StatusCode, header: resp.Header})
}
