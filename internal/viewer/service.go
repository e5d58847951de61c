package viewer

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// Subprotocol is the WebSocket subprotocol noVNC asks for.
const Subprotocol = "binary"

// Config tunes a Service. Zero durations disable the matching limit.
type Config struct {
	// PingInterval: the server pings each browser this often; a missing
	// pong closes the viewer with ReasonPingTimeout.
	PingInterval time.Duration
	// IdleTimeout closes a viewer with no data either way for this long.
	IdleTimeout time.Duration
	// MaxLifetime bounds any one connection, whatever its token says.
	MaxLifetime time.Duration
}

// Resolver returns the address of a VM's VNC server. It answers with
// errdefs errors: not found for a VM that is gone, conflict for one that
// is not (or no longer) ready.
type Resolver func(ctx context.Context, vmID string) (string, error)

// Grant is what Issue hands out: a page token (reusable until Expires, to
// open the page and buy socket tokens) and a single-use socket token.
type Grant struct {
	PageToken   string
	SocketToken string
	Expires     time.Time
	ViewOnly    bool
}

// IssueOptions say what a grant allows.
type IssueOptions struct {
	TTL      time.Duration
	ViewOnly bool
	// Session binds the tokens to a login session ("" for none).
	Session string
}

// Info describes one open viewer, for GET /v1/vms/{id}.
type Info struct {
	ID       string
	VMID     string
	Session  string
	ViewOnly bool
	Remote   string
	OpenedAt time.Time
}

// Service issues viewer tokens, bridges viewer sockets to guests and keeps
// track of the open viewers so that a VM's end closes them with a reason.
type Service struct {
	cfg     Config
	signer  *Signer
	replay  Replay
	resolve Resolver
	dialer  net.Dialer
	log     *slog.Logger
	now     func() time.Time

	ctx    context.Context // cancelled by Shutdown: viewers close with ReasonShutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	open map[string]map[string]*openViewer // vm id → viewer id → viewer
	// gone remembers VMs closed by CloseVM until their tokens can no
	// longer be used, so a viewer racing the close is refused too.
	gone map[string]goneVM
}

type openViewer struct {
	info   Info
	closer *Closer
}

type goneVM struct {
	reason CloseReason
	until  time.Time
}

// NewService returns a Service signing with signer and finding guests with
// resolve.
func NewService(cfg Config, signer *Signer, resolve Resolver, log *slog.Logger) *Service {
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{
		cfg: cfg, signer: signer, resolve: resolve, log: log, now: time.Now,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		ctx:    ctx, cancel: cancel,
		open: map[string]map[string]*openViewer{}, gone: map[string]goneVM{},
	}
}

// Issue signs a page token and a socket token for vmID, both expiring
// after o.TTL.
func (s *Service) Issue(vmID string, o IssueOptions) (Grant, error) {
	if o.TTL <= 0 {
		return Grant{}, errdefs.Invalidf("viewer ttl must be positive")
	}
	exp := s.now().Add(o.TTL).Truncate(time.Second)
	c := Claims{Kind: KindPage, VMID: vmID, Session: o.Session, ViewOnly: o.ViewOnly, Expires: exp}
	page, err := s.signer.Sign(c)
	if err != nil {
		return Grant{}, err
	}
	c.Kind = KindSocket
	sock, err := s.signer.Sign(c)
	if err != nil {
		return Grant{}, err
	}
	return Grant{PageToken: page, SocketToken: sock, Expires: exp, ViewOnly: o.ViewOnly}, nil
}

// Ticket exchanges a valid page token for vmID for a fresh single-use
// socket token with the same rights and expiry. Errors wrap the token
// sentinels (ErrExpired for an expired page) and never contain the token.
func (s *Service) Ticket(pageToken, vmID string) (string, Claims, error) {
	c, err := s.signer.Verify(pageToken, vmID, s.now())
	if err != nil {
		return "", Claims{}, err
	}
	if c.Kind != KindPage {
		return "", Claims{}, fmt.Errorf("%w: %s token where a page token is needed", ErrWrongKind, c.Kind)
	}
	c.Kind, c.Nonce = KindSocket, ""
	tok, err := s.signer.Sign(c)
	return tok, c, err
}

// ServeSocket upgrades r to a WebSocket and bridges it to vmID's VNC
// server if token allows it. A refused token (forged, expired, replayed,
// another VM's, a page token) is answered with a close frame giving the
// reason, and no connection is made to the guest. originHosts are the
// browser origins allowed besides the request's own Host.
func (s *Service) ServeSocket(w http.ResponseWriter, r *http.Request, vmID, token string, originHosts []string) {
	ws, err := Accept(w, r, originHosts, 0)
	if err != nil {
		s.log.Info("viewer upgrade refused", "vm", vmID, "remote", r.RemoteAddr, "err", err)
		return // Accept has answered
	}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		_ = ws.Close(ReasonShutdown.Code, ReasonShutdown.Text)
		return
	}
	s.wg.Add(1) // under mu, so never concurrent with Shutdown's Wait
	s.mu.Unlock()
	defer s.wg.Done()

	v := &openViewer{closer: NewCloser(), info: Info{
		ID: newViewerID(), VMID: vmID, Remote: r.RemoteAddr, OpenedAt: s.now().UTC(),
	}}
	conn, claims, err := Connect(r.Context(), s.signer, &s.replay, token, vmID, func(ctx context.Context) (net.Conn, error) {
		// Registered before the dial, so a VM that ends meanwhile closes
		// this viewer too; refused if it already ended.
		if reason, gone := s.register(v); gone {
			return nil, &closedError{reason}
		}
		addr, err := s.resolve(ctx, vmID)
		if err != nil {
			return nil, err
		}
		return s.dialer.DialContext(ctx, "tcp", addr)
	})
	if err != nil {
		s.unregister(v)
		reason := s.refusal(err)
		s.log.Info("viewer refused", "vm", vmID, "viewer", v.info.ID, "remote", r.RemoteAddr, "reason", reason.Text, "err", err)
		_ = ws.Close(reason.Code, reason.Text)
		return
	}
	defer s.unregister(v)
	s.setClaims(v, claims)

	s.log.Info("viewer opened", "vm", vmID, "viewer", v.info.ID, "remote", r.RemoteAddr, "view_only", claims.ViewOnly, "session", claims.Session)
	reason, err := Bridge(s.ctx, ws, conn, Options{
		PingInterval: s.cfg.PingInterval,
		IdleTimeout:  s.cfg.IdleTimeout,
		MaxLifetime:  s.cfg.MaxLifetime,
		Expires:      claims.Expires,
		ViewOnly:     claims.ViewOnly,
		Closer:       v.closer,
	})
	attrs := []any{"vm", vmID, "viewer", v.info.ID, "code", int(reason.Code), "reason", reason.Text,
		"duration_ms", s.now().Sub(v.info.OpenedAt).Milliseconds()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.log.Info("viewer closed", attrs...)
}

// closedError is a dial refused because the VM's viewers were closed.
type closedError struct{ reason CloseReason }

func (e *closedError) Error() string { return "vm viewers closed: " + e.reason.Text }

// refusal is the close reason for a failed Connect.
func (s *Service) refusal(err error) CloseReason {
	var ce *closedError
	switch {
	case errors.As(err, &ce):
		return ce.reason
	case errors.Is(err, errdefs.ErrNotFound):
		return ReasonVMDestroyed
	case errors.Is(err, errdefs.ErrConflict):
		// Not ready yet (or any more): worth retrying while it boots.
		return ReasonVNCUnreachable
	}
	return ReasonFor(err)
}

// register adds v to the open viewers unless v's VM was closed; then it
// reports the reason.
func (s *Service) register(v *openViewer) (CloseReason, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.gone[v.info.VMID]; ok && s.now().Before(g.until) {
		return g.reason, true
	}
	m := s.open[v.info.VMID]
	if m == nil {
		m = map[string]*openViewer{}
		s.open[v.info.VMID] = m
	}
	m[v.info.ID] = v
	return CloseReason{}, false
}

func (s *Service) setClaims(v *openViewer, c Claims) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v.info.ViewOnly, v.info.Session = c.ViewOnly, c.Session
}

func (s *Service) unregister(v *openViewer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.open[v.info.VMID]
	delete(m, v.info.ID)
	if len(m) == 0 {
		delete(s.open, v.info.VMID)
	}
}

// Open lists vmID's open viewers, oldest first.
func (s *Service) Open(vmID string) []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Info, 0, len(s.open[vmID]))
	for _, v := range s.open[vmID] {
		out = append(out, v.info)
	}
	slices.SortFunc(out, func(a, b Info) int {
		if c := a.OpenedAt.Compare(b.OpenedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// Count is the number of open viewers on all VMs.
func (s *Service) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.open {
		n += len(m)
	}
	return n
}

// CloseVM closes every viewer of vmID with reason and refuses new ones for
// as long as a token issued now could live (until forgetAfter). It returns
// how many viewers it closed.
func (s *Service) CloseVM(vmID string, reason CloseReason, forgetAfter time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for id, g := range s.gone {
		if !now.Before(g.until) {
			delete(s.gone, id)
		}
	}
	s.gone[vmID] = goneVM{reason: reason, until: now.Add(forgetAfter)}
	for _, v := range s.open[vmID] {
		v.closer.Close(reason)
	}
	return len(s.open[vmID])
}

// OnTransition closes v's viewers when v leaves service: "vm destroyed"
// once it is being stopped (hearth stops VMs only to destroy them), "vm
// failed" when it fails. Viewers of that VM are refused from then on, for
// as long as forgetAfter (the longest a link lives).
func (s *Service) OnTransition(v store.VM, forgetAfter time.Duration) {
	switch v.State {
	case store.StateStopping, store.StateStopped, store.StateDestroyed:
		s.CloseVM(v.ID, ReasonVMDestroyed, forgetAfter)
	case store.StateFailed:
		s.CloseVM(v.ID, ReasonVMFailed, forgetAfter)
	}
}

// CloseLogin closes the viewers of a login's browser VM when the login
// ends, with text (e.g. "login completed") as the reason (code 4010).
func (s *Service) CloseLogin(vmID, text string) {
	s.CloseVM(vmID, CloseReason{ReasonLoginEnded.Code, text}, time.Hour)
}

// Shutdown closes every viewer with ReasonShutdown and waits for them, or
// for ctx.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.cancel()
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("viewers still open at shutdown: %w", ctx.Err())
	}
}

func newViewerID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "vwr_" + hex.EncodeToString(b)
}
