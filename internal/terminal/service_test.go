package terminal

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/workapi"
)

type epochs struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (e *epochs) ViewerEpoch(_ context.Context, id string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[id], nil
}

func (e *epochs) BumpViewerEpoch(_ context.Context, id string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.m[id]++
	return e.m[id], nil
}

// harness is a terminal Service for VM "vm1" on a fake agent, its socket
// served at a test server.
type harness struct {
	a   *fakeAgent
	w   *workapi.Client
	s   *Service
	srv *httptest.Server
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	a := newFakeAgent(t)
	w := a.client()
	t.Cleanup(func() { w.Close() })
	t.Cleanup(a.killAll)
	signer, err := viewer.NewSigner(LinkKey([]byte("a viewer key of at least 32 bytes!")))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	links := viewer.NewService(viewer.Config{MaxPerLink: 2}, signer, &epochs{m: map[string]uint64{}}, nil, log)
	s := NewService(cfg, links, func(_ context.Context, id string) (*workapi.Client, error) {
		if id != "vm1" {
			return nil, errdefs.NotFoundf("no vm %s", id)
		}
		return w, nil
	}, log)
	h := &harness{a: a, w: w, s: s}
	h.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		s.ServeSocket(rw, r, r.URL.Query().Get("vm"), r.URL.Query().Get("token"), nil)
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return h
}

// dial opens a terminal socket with a fresh ticket bought with page.
func (h *harness) dial(t *testing.T, vm, page string) *bridged {
	t.Helper()
	sock, _, err := h.s.Links().Ticket(context.Background(), page, vm, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	return h.dialToken(t, vm, sock)
}

func (h *harness) dialToken(t *testing.T, vm, sock string) *bridged {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(h.srv.URL, "http") + "/?" + url.Values{"vm": {vm}, "token": {sock}}.Encode()
	ws, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &bridged{ws: ws}
}

func (h *harness) open(t *testing.T, r Request) Link {
	t.Helper()
	if r.TTL == 0 {
		r.TTL = time.Hour
	}
	l, err := h.s.Open(context.Background(), "vm1", r)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A session is started once and reused; a reconnecting socket gets the
// screen back from the shell's history.
func TestSessionIsReusedAndReplayed(t *testing.T) {
	h := newHarness(t, Config{})
	first := h.open(t, Request{Cols: 90, Rows: 30})
	if !first.Created || first.ProcessID == "" {
		t.Fatalf("first link %+v: want a new shell", first)
	}
	p, err := h.w.Process(context.Background(), first.ProcessID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Tag != Tag || p.PTY == nil || *p.PTY != (workapi.WindowSize{Cols: 90, Rows: 30}) {
		t.Fatalf("shell %+v: want tag %q on a 90x30 PTY", p, Tag)
	}
	second := h.open(t, Request{Cols: 100, Rows: 40})
	if second.Created || second.ProcessID != first.ProcessID {
		t.Fatalf("second link %+v: want the same shell %s", second, first.ProcessID)
	}

	b := h.dial(t, "vm1", first.PageToken)
	if ev := b.event(t); ev.Type != v1.TerminalEventTypeHello || ev.Process != first.ProcessID {
		t.Fatalf("got %+v, want hello", ev)
	}
	b.send(t, websocket.MessageBinary, []byte("stty size; echo mark-$((6*7))\n"))
	b.until(t, "mark-42")
	if !strings.Contains(b.out.String(), "40 100") {
		t.Fatalf("the reused session was not resized: %q", b.out.String())
	}
	_ = b.ws.Close(websocket.StatusNormalClosure, "")

	again := h.dial(t, "vm1", second.PageToken)
	again.event(t)
	again.until(t, "mark-42")
}

// A shell left running by an earlier hearth (a new Service) is adopted,
// not doubled.
func TestSessionAdoptsARunningShell(t *testing.T) {
	h := newHarness(t, Config{})
	old, err := h.w.StartProcess(context.Background(), workapi.ProcessSpec{Argv: []string{"/bin/sh"}, User: workapi.DefaultUser,
		Tag: Tag, PTY: &workapi.WindowSize{Cols: 80, Rows: 24}})
	if err != nil {
		t.Fatal(err)
	}
	l := h.open(t, Request{})
	if l.Created || l.ProcessID != old.ID {
		t.Fatalf("link %+v: want the running shell %s adopted", l, old.ID)
	}
	if other := h.open(t, Request{User: "root"}); other.ProcessID == old.ID || !other.Created {
		t.Fatalf("another user's session %+v reused %s", other, old.ID)
	}
}

// After its last socket closes, a session lingers, then is hung up; a
// socket that comes back in time keeps it.
func TestSessionLingersThenHangsUp(t *testing.T) {
	h := newHarness(t, Config{Linger: 300 * time.Millisecond, KillGrace: time.Second})
	l := h.open(t, Request{})
	b := h.dial(t, "vm1", l.PageToken)
	b.event(t)
	// Open for many lingers: no hangup while a socket is attached.
	b.send(t, websocket.MessageBinary, []byte("sleep 1; echo awake-$((2+2))\n"))
	b.until(t, "awake-4")
	if got := h.a.signalsOf(l.ProcessID); len(got) != 0 {
		t.Fatalf("signals %v sent to an attached session", got)
	}
	_ = b.ws.Close(websocket.StatusNormalClosure, "")
	exit := h.a.waitExit(t, l.ProcessID)
	if exit.Signal != "HUP" {
		t.Fatalf("session ended %+v, want by HUP", exit)
	}
	if got := h.a.signalsOf(l.ProcessID); len(got) == 0 || got[0] != "HUP" {
		t.Fatalf("signals %v, want HUP first", got)
	}
	next := h.open(t, Request{})
	if !next.Created || next.ProcessID == l.ProcessID {
		t.Fatalf("after the hangup %+v: want a new shell", next)
	}
}

// A shell that ignores SIGHUP is killed after the grace.
func TestSessionKilledAfterGrace(t *testing.T) {
	h := newHarness(t, Config{Linger: 100 * time.Millisecond, KillGrace: time.Second})
	l := h.open(t, Request{Command: "trap '' HUP; while :; do sleep 1; done"})
	exit := h.a.waitExit(t, l.ProcessID)
	if exit.Signal != "KILL" {
		t.Fatalf("session ended %+v, want by KILL", exit)
	}
	if got := h.a.signalsOf(l.ProcessID); len(got) != 2 || got[0] != "HUP" || got[1] != "KILL" {
		t.Fatalf("signals %v, want HUP then KILL", got)
	}
}

func closedWith(t *testing.T, b *bridged, want CloseReason) {
	t.Helper()
	code, text := b.closed(t)
	if code != want.Code || text != want.Text {
		t.Fatalf("closed %d %q, want %d %q", code, text, want.Code, want.Text)
	}
}

// The token model is the viewer's: single-use socket tokens, for one VM,
// not past their link; a page token is not a socket token; a viewer
// token is no terminal token.
func TestSocketTokens(t *testing.T) {
	h := newHarness(t, Config{})
	l := h.open(t, Request{})
	sock, _, err := h.s.Links().Ticket(context.Background(), l.PageToken, "vm1", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	b := h.dialToken(t, "vm1", sock)
	b.event(t)
	closedWith(t, h.dialToken(t, "vm1", sock), viewer.ReasonInvalidToken) // used once already

	other, _, err := h.s.Links().Ticket(context.Background(), l.PageToken, "vm1", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	closedWith(t, h.dialToken(t, "vm2", other), viewer.ReasonInvalidToken) // another VM
	closedWith(t, h.dialToken(t, "vm1", l.PageToken), viewer.ReasonInvalidToken)

	if _, _, err := h.s.Links().Ticket(context.Background(), l.PageToken, "vm2", "192.0.2.1"); !errors.Is(err, viewer.ErrWrongVM) {
		t.Fatalf("a ticket for another vm: %v", err)
	}
	vsigner, _ := viewer.NewSigner([]byte("a viewer key of at least 32 bytes!"))
	vpage, _ := vsigner.Sign(viewer.Claims{Kind: viewer.KindPage, VMID: "vm1", Expires: time.Now().Add(time.Hour), Session: l.ProcessID})
	if _, _, err := h.s.Links().Ticket(context.Background(), vpage, "vm1", "192.0.2.1"); !errors.Is(err, viewer.ErrForged) {
		t.Fatalf("a viewer link bought a terminal ticket: %v", err)
	}

	short, err := h.s.Open(context.Background(), "vm1", Request{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	expired := h.dial(t, "vm1", short.PageToken)
	expired.event(t)
	closedWith(t, expired, viewer.ReasonTokenExpired) // the link's end closes its socket
	if _, _, err := h.s.Links().Ticket(context.Background(), short.PageToken, "vm1", "192.0.2.1"); !errors.Is(err, viewer.ErrExpired) {
		t.Fatalf("an expired link bought a ticket: %v", err)
	}
}

// A VM that stops closes its terminals with the viewer's reason and
// forgets its sessions.
func TestVMEndClosesTerminals(t *testing.T) {
	h := newHarness(t, Config{})
	l := h.open(t, Request{})
	b := h.dial(t, "vm1", l.PageToken)
	b.event(t)
	h.s.OnTransition(store.VM{ID: "vm1", State: store.StateStopping}, time.Hour)
	closedWith(t, b, viewer.ReasonVMDestroyed)
	if got := h.s.Sessions("vm1"); len(got) != 0 {
		t.Fatalf("sessions %v kept after the vm stopped", got)
	}
}

// Attach bridges an API client to any process, from the oldest byte kept
// by default or from an offset.
func TestAttach(t *testing.T) {
	h := newHarness(t, Config{})
	p, err := h.w.StartProcess(context.Background(), workapi.ProcessSpec{Command: "echo first; read line; echo got-$line", Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	var offset *int64
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if err := h.s.Attach(rw, r, "vm1", r.URL.Query().Get("pid"), offset); err != nil {
			http.Error(rw, err.Error(), http.StatusNotFound)
		}
	}))
	defer srv.Close()
	dial := func(pid string) (*bridged, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/?pid="+pid, nil)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { ws.CloseNow() })
		return &bridged{ws: ws}, nil
	}
	if _, err := dial("p404"); err == nil {
		t.Fatal("attached to a process that does not exist")
	}
	b, err := dial(p.ID)
	if err != nil {
		t.Fatal(err)
	}
	b.event(t)
	b.until(t, "first\n")
	b.send(t, websocket.MessageBinary, []byte("you\n"))
	b.until(t, "got-you\n")
	if ev := b.event(t); ev.Type != v1.TerminalEventTypeExit || *ev.Code != 0 {
		t.Fatalf("got %+v, want exit 0", ev)
	}
	closedWith(t, b, ReasonExited)

	six := int64(6)
	offset = &six
	late, err := dial(p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ev := late.event(t); *ev.Offset != 6 {
		t.Fatalf("hello %+v, want offset 6", ev)
	}
	late.event(t) // exit
	if late.out.String() != "got-you\n" {
		t.Fatalf("output from offset 6: %q", late.out.String())
	}
}
