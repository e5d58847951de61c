package viewer

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/tokenbucket"
)

// Subprotocol is the WebSocket subprotocol noVNC asks for.
const Subprotocol = "binary"

// Defaults for zero Config fields.
const (
	// DefaultSocketTTL is how long a socket token may wait to be used:
	// the page uses it at once, and a token that outlives a restart is
	// worthless anyway (see Service).
	DefaultSocketTTL = 30 * time.Second
)

// Config tunes a Service. Zero durations disable the matching limit; zero
// counts mean no cap.
type Config struct {
	// PingInterval: the server pings each browser this often; a missing
	// pong closes the viewer with ReasonPingTimeout.
	PingInterval time.Duration
	// IdleTimeout closes a viewer with no data either way for this long.
	IdleTimeout time.Duration
	// MaxLifetime bounds any one connection, whatever its token says.
	MaxLifetime time.Duration
	// SocketTTL is a socket token's lifetime (DefaultSocketTTL if zero).
	SocketTTL time.Duration
	// MaxPerLink and MaxPerVM cap the viewers open at once through one
	// link and on one VM.
	MaxPerLink, MaxPerVM int
	// TicketsPerLink and TicketsPerClient bound ticket exchanges: per
	// minute, in bursts of as many, for one link and for one client
	// address (IPv6: its /64).
	TicketsPerLink, TicketsPerClient int
	// MaxUsed bounds the used socket tokens remembered at once
	// (DefaultMaxUsed if zero).
	MaxUsed int
}

// Epochs keeps each VM's viewer epoch where it survives restarts (the
// store). Every link carries the epoch it was issued in; RevokeVM moves
// the epoch on, and tokens of another epoch are refused.
type Epochs interface {
	// ViewerEpoch is vmID's epoch: 0 until its viewers are first revoked.
	ViewerEpoch(ctx context.Context, vmID string) (uint64, error)
	// BumpViewerEpoch moves vmID's epoch on and returns the new one.
	BumpViewerEpoch(ctx context.Context, vmID string) (uint64, error)
}

// Resolver returns the address of a VM's VNC server. It answers with
// errdefs errors: not found for a VM that is gone, conflict for one that
// is not (or no longer) ready.
type Resolver func(ctx context.Context, vmID string) (string, error)

// Grant is what Issue hands out: a page token (reusable until Expires, to
// open the page and buy socket tokens) and a single-use socket token,
// valid until SocketExpires.
type Grant struct {
	PageToken     string
	SocketToken   string
	Expires       time.Time
	SocketExpires time.Time
	ViewOnly      bool
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

// Refusals of the viewer service besides the token sentinels.
var (
	ErrVNCUnreachable = errors.New("guest vnc unreachable")
	ErrRevoked        = errors.New("viewer link revoked")
	ErrStale          = errors.New("viewer socket token expired or issued before a restart")
	ErrLinkFull       = errors.New("too many viewers on this link")
	ErrVMFull         = errors.New("too many viewers on this vm")
)

// LimitError is a viewer refused by a cap; errors.Is matches ErrLinkFull
// or ErrVMFull.
type LimitError struct {
	Link bool // the link's cap, else the VM's
	Max  int
}

func (e *LimitError) Error() string {
	if e.Link {
		return fmt.Sprintf("this viewer link already has %d open viewers, the most allowed", e.Max)
	}
	return fmt.Sprintf("this vm already has %d open viewers, the most allowed", e.Max)
}

// Is matches the sentinel of the cap that refused.
func (e *LimitError) Is(target error) bool {
	return (e.Link && target == ErrLinkFull) || (!e.Link && target == ErrVMFull)
}

// Service issues viewer tokens, bridges viewer sockets to guests and keeps
// track of the open viewers so that a VM's end closes them with a reason.
//
// Socket tokens name the Service that issued them (a random instance id):
// only it remembers which were used, so a new Service (a restarted
// daemon) refuses them all and pages buy fresh ones with their page token.
type Service struct {
	cfg      Config
	signer   *Signer
	epochs   Epochs
	instance string
	replay   Replay
	resolve  Resolver
	dialer   net.Dialer
	log      *slog.Logger
	now      func() time.Time

	linkTickets   *tokenbucket.Keyed
	clientTickets *tokenbucket.Keyed

	ctx    context.Context // cancelled by Shutdown: viewers close with ReasonShutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	open map[string]map[string]*openViewer // vm id → viewer id → viewer
	// gone remembers VMs closed by CloseVM until their tokens can no
	// longer be used, so a viewer racing the close is refused too.
	gone map[string]goneVM
	// floor is, per VM revoked since this Service started, the oldest
	// epoch still valid: a viewer that read the epoch just before a
	// revocation is refused when it registers.
	floor map[string]uint64
}

type openViewer struct {
	info   Info
	link   string
	epoch  uint64
	closer *Closer
}

type goneVM struct {
	reason CloseReason
	until  time.Time
}

// NewService returns a Service signing with signer, keeping epochs in
// epochs and finding guests with resolve.
func NewService(cfg Config, signer *Signer, epochs Epochs, resolve Resolver, log *slog.Logger) *Service {
	if cfg.SocketTTL <= 0 {
		cfg.SocketTTL = DefaultSocketTTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{
		cfg: cfg, signer: signer, epochs: epochs, instance: newID(""), resolve: resolve, log: log, now: time.Now,
		replay:      Replay{Max: cfg.MaxUsed},
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		linkTickets: newLimiter(cfg.TicketsPerLink), clientTickets: newLimiter(cfg.TicketsPerClient),
		ctx: ctx, cancel: cancel,
		open: map[string]map[string]*openViewer{}, gone: map[string]goneVM{}, floor: map[string]uint64{},
	}
}

// Issue signs a page token and a socket token for vmID in its current
// epoch, both for a new link that ends after o.TTL.
func (s *Service) Issue(ctx context.Context, vmID string, o IssueOptions) (Grant, error) {
	if o.TTL <= 0 {
		return Grant{}, errdefs.Invalidf("viewer ttl must be positive")
	}
	epoch, err := s.epochs.ViewerEpoch(ctx, vmID)
	if err != nil {
		return Grant{}, fmt.Errorf("issue viewer link for vm %s: %w", vmID, err)
	}
	now := s.now()
	exp := now.Add(o.TTL).Truncate(time.Second)
	c := Claims{Kind: KindPage, VMID: vmID, Session: o.Session, ViewOnly: o.ViewOnly, Expires: exp,
		Link: newID("lnk_"), Epoch: epoch}
	page, err := s.signer.Sign(c)
	if err != nil {
		return Grant{}, err
	}
	sock, sc, err := s.socketToken(c, now)
	if err != nil {
		return Grant{}, err
	}
	return Grant{PageToken: page, SocketToken: sock, Expires: exp, SocketExpires: sc.Expires, ViewOnly: o.ViewOnly}, nil
}

// socketToken signs a socket token of page claims c: this Service's,
// valid for SocketTTL (rounded up to the second) but not past the link.
func (s *Service) socketToken(c Claims, now time.Time) (string, Claims, error) {
	exp := now.Add(s.cfg.SocketTTL)
	if t := exp.Truncate(time.Second); !t.Equal(exp) {
		exp = t.Add(time.Second)
	}
	link := c.LinkEnd()
	c.Kind, c.Nonce, c.Instance = KindSocket, "", s.instance
	if link.Before(exp) {
		exp = link
	}
	c.Expires, c.LinkExpires = exp, link
	tok, err := s.signer.Sign(c)
	return tok, c, err
}

// Ticket exchanges a valid page token for vmID for a fresh single-use
// socket token with the same rights, valid for seconds. client is the
// caller's address, for its rate limit. Errors wrap the token sentinels
// (ErrExpired for an expired page), ErrRevoked, ErrRateLimited
// (*RateLimitError) or ErrLinkFull/ErrVMFull (*LimitError), and never
// contain the token.
func (s *Service) Ticket(ctx context.Context, pageToken, vmID, client string) (string, Claims, error) {
	now := s.now()
	if ok, wait := allow(s.clientTickets, clientKey(client), now); !ok {
		return "", Claims{}, &RateLimitError{What: "client", RetryAfter: wait}
	}
	c, err := s.signer.Verify(pageToken, vmID, now)
	if err != nil {
		return "", Claims{}, err
	}
	if c.Kind != KindPage {
		return "", Claims{}, fmt.Errorf("%w: %s token where a page token is needed", ErrWrongKind, c.Kind)
	}
	if c.Link == "" {
		c.Link = c.Nonce // a link issued before links were named
	}
	if err := s.current(ctx, c); err != nil {
		return "", Claims{}, err
	}
	if ok, wait := allow(s.linkTickets, vmID+" "+c.Link, now); !ok {
		return "", Claims{}, &RateLimitError{What: "link", RetryAfter: wait}
	}
	s.mu.Lock()
	err = s.roomLocked(c)
	s.mu.Unlock()
	if err != nil {
		return "", Claims{}, err
	}
	return s.socketToken(c, now)
}

// current refuses c unless it is of its VM's current viewer epoch.
func (s *Service) current(ctx context.Context, c Claims) error {
	epoch, err := s.epochs.ViewerEpoch(ctx, c.VMID)
	if err != nil {
		return fmt.Errorf("read viewer epoch of vm %s: %w", c.VMID, err)
	}
	s.mu.Lock()
	floor := s.floor[c.VMID]
	s.mu.Unlock()
	if c.Epoch != epoch || c.Epoch < floor {
		return ErrRevoked
	}
	return nil
}

// roomLocked refuses a viewer of c's link when the link or the VM has as
// many open viewers as allowed.
func (s *Service) roomLocked(c Claims) error {
	m := s.open[c.VMID]
	if s.cfg.MaxPerLink > 0 {
		n := 0
		for _, v := range m {
			if v.link == c.Link {
				n++
			}
		}
		if n >= s.cfg.MaxPerLink {
			return &LimitError{Link: true, Max: s.cfg.MaxPerLink}
		}
	}
	if s.cfg.MaxPerVM > 0 {
		n := 0
		for _, v := range m {
			if v.link != "" { // sockets that joined without a link do not count
				n++
			}
		}
		if n >= s.cfg.MaxPerVM {
			return &LimitError{Max: s.cfg.MaxPerVM}
		}
	}
	return nil
}

// admit checks a socket token for vmID: signature, VM, kind, issued by
// this Service, unexpired, of the current epoch, and unused (which it then
// is no more). Nothing is dialled before.
func (s *Service) admit(ctx context.Context, token, vmID string) (Claims, error) {
	c, err := s.signer.Verify(token, vmID, s.now())
	if err != nil && !errors.Is(err, ErrExpired) {
		return Claims{}, err
	}
	if c.Kind != KindSocket {
		return Claims{}, fmt.Errorf("%w: %s token on the socket", ErrWrongKind, c.Kind)
	}
	if err != nil {
		if s.now().Before(c.LinkEnd()) {
			return Claims{}, fmt.Errorf("%w: %w", ErrStale, err) // its link lives on: the page buys another
		}
		return Claims{}, err
	}
	if c.Instance != s.instance {
		return Claims{}, ErrStale
	}
	if c.Link == "" {
		c.Link = c.Nonce
	}
	if err := s.current(ctx, c); err != nil {
		return Claims{}, err
	}
	if err := s.replay.Use(c); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// ServeSocket upgrades r to a WebSocket and bridges it to vmID's VNC
// server if token allows it and the link and VM have room for another
// viewer. A refused token (forged, expired, replayed, revoked, another
// VM's, a page token) or viewer is answered with a close frame giving the
// reason, and no connection is made to the guest. originHosts are the
// browser origins allowed besides the request's own Host.
func (s *Service) ServeSocket(w http.ResponseWriter, r *http.Request, vmID, token string, originHosts []string) {
	ws, err := Accept(w, r, originHosts, 0)
	if err != nil {
		s.log.Info("viewer upgrade refused", "vm", vmID, "remote", r.RemoteAddr, "err", err)
		return // Accept has answered
	}
	a, err := s.Admit(r.Context(), token, vmID, r.RemoteAddr)
	var conn net.Conn
	if err == nil {
		conn, err = s.dial(r.Context(), vmID)
		if err != nil {
			a.Done()
		}
	}
	if err != nil {
		reason := s.Refusal(err)
		attrs := []any{"vm", vmID, "remote", r.RemoteAddr, "reason", reason.Text, "err", err}
		if a != nil {
			attrs = append(attrs, "viewer", a.ID)
		}
		s.log.Info("viewer refused", attrs...)
		_ = ws.Close(reason.Code, reason.Text)
		return
	}
	defer a.Done()

	claims := a.Claims
	s.log.Info("viewer opened", "vm", vmID, "viewer", a.ID, "remote", r.RemoteAddr, "view_only", claims.ViewOnly, "session", claims.Session)
	reason, err := Bridge(a.Context(), ws, conn, Options{
		PingInterval: s.cfg.PingInterval,
		IdleTimeout:  s.cfg.IdleTimeout,
		MaxLifetime:  s.cfg.MaxLifetime,
		Expires:      claims.LinkEnd(),
		ViewOnly:     claims.ViewOnly,
		Closer:       a.Closer,
	})
	attrs := []any{"vm", vmID, "viewer", a.ID, "code", int(reason.Code), "reason", reason.Text,
		"duration_ms", s.now().Sub(a.opened).Milliseconds()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.log.Info("viewer closed", attrs...)
}

// ErrShutdown is a socket refused because the Service is shutting down.
var ErrShutdown = errors.New("viewer service shutting down")

// Admission is a socket Admit let in: its token's claims, and its place
// among the VM's open viewers (counted against the caps, closed through
// Closer when the VM ends or its links are revoked) until Done.
type Admission struct {
	// ID names the viewer in logs and in Open.
	ID     string
	Claims Claims
	// Closer closes the socket's bridge with a reason.
	Closer *Closer
	opened time.Time
	s      *Service
	v      *openViewer
	done   sync.Once
}

// Context is cancelled when the Service shuts down: bridges run in it
// and close with ReasonShutdown.
func (a *Admission) Context() context.Context { return a.s.ctx }

// Done removes the viewer from the open ones; Shutdown waits for it.
func (a *Admission) Done() {
	a.done.Do(func() {
		a.s.unregister(a.v)
		a.s.wg.Done()
	})
}

// Admit checks socket token for vmID (signature, VM, kind, issued by this
// Service, unexpired, of the current epoch, unused; it is used from now
// on) and registers a viewer for it from remote, unless the VM was
// closed, its links revoked meanwhile or it or the link has no room. The
// caller then serves the socket with the admission's Closer and Context
// and calls Done. Errors wrap the token sentinels, ErrRevoked, ErrStale,
// ErrLinkFull/ErrVMFull or ErrShutdown; Refusal turns them into a close
// reason.
func (s *Service) Admit(ctx context.Context, token, vmID, remote string) (*Admission, error) {
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return nil, ErrShutdown
	}
	s.wg.Add(1) // under mu, so never concurrent with Shutdown's Wait
	s.mu.Unlock()
	v := &openViewer{closer: NewCloser(), info: Info{
		ID: newViewerID(), VMID: vmID, Remote: remote, OpenedAt: s.now().UTC(),
	}}
	c, err := s.admit(ctx, token, vmID)
	if err == nil {
		v.link, v.epoch, v.info.ViewOnly, v.info.Session = c.Link, c.Epoch, c.ViewOnly, c.Session
		err = s.register(v)
	}
	if err != nil {
		s.wg.Done()
		return nil, fmt.Errorf("connect viewer for vm %s: %w", vmID, err)
	}
	return &Admission{ID: v.info.ID, Claims: c, Closer: v.closer, opened: v.info.OpenedAt, s: s, v: v}, nil
}

// Join registers a socket that no token opened (an API client the
// caller authenticated) among vmID's open ones, so that the VM's end and
// Shutdown close it as they close viewers. No cap applies and revoking
// the VM's links leaves it open. Errors: the VM's close reason, or
// ErrShutdown.
func (s *Service) Join(vmID, remote string) (*Admission, error) {
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return nil, ErrShutdown
	}
	s.wg.Add(1)
	defer s.mu.Unlock()
	v := &openViewer{closer: NewCloser(), epoch: math.MaxUint64, info: Info{
		ID: newViewerID(), VMID: vmID, Remote: remote, OpenedAt: s.now().UTC(),
	}}
	if g, ok := s.gone[vmID]; ok && s.now().Before(g.until) {
		s.wg.Done()
		return nil, &closedError{g.reason}
	}
	m := s.open[vmID]
	if m == nil {
		m = map[string]*openViewer{}
		s.open[vmID] = m
	}
	m[v.info.ID] = v
	return &Admission{ID: v.info.ID, Closer: v.closer, opened: v.info.OpenedAt, s: s, v: v}, nil
}

// dial connects to vmID's VNC server.
func (s *Service) dial(ctx context.Context, vmID string) (net.Conn, error) {
	addr, err := s.resolve(ctx, vmID)
	var conn net.Conn
	if err == nil {
		conn, err = s.dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrVNCUnreachable, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("connect viewer for vm %s: %w", vmID, err)
	}
	return conn, nil
}

// closedError is a dial refused because the VM's viewers were closed.
type closedError struct{ reason CloseReason }

func (e *closedError) Error() string { return "vm viewers closed: " + e.reason.Text }

// Refusal is the close reason for a viewer that could not connect.
func (s *Service) Refusal(err error) CloseReason {
	var ce *closedError
	switch {
	case errors.As(err, &ce):
		return ce.reason
	case errors.Is(err, ErrShutdown):
		return ReasonShutdown
	case errors.Is(err, ErrRevoked):
		return ReasonRevoked
	case errors.Is(err, ErrLinkFull):
		return ReasonLinkFull
	case errors.Is(err, ErrVMFull):
		return ReasonVMFull
	case errors.Is(err, ErrStale):
		return ReasonSocketExpired
	case errors.Is(err, ErrBusy):
		return ReasonBusy
	case errors.Is(err, ErrExpired):
		return ReasonTokenExpired
	case errors.Is(err, ErrVNCUnreachable):
		return ReasonVNCUnreachable
	case errors.Is(err, errdefs.ErrNotFound):
		return ReasonVMDestroyed
	case errors.Is(err, errdefs.ErrConflict):
		// Not ready yet (or any more): worth retrying while it boots.
		return ReasonVNCUnreachable
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrForged), errors.Is(err, ErrWrongVM),
		errors.Is(err, ErrWrongKind), errors.Is(err, ErrReplayed):
		return ReasonInvalidToken
	}
	return ReasonInternal // the store could not say the epoch: worth a retry
}

// register adds v to the open viewers unless v's VM was closed (the
// error carries the reason), its epoch was revoked meanwhile, or there is
// no room for it.
func (s *Service) register(v *openViewer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vmID := v.info.VMID
	if g, ok := s.gone[vmID]; ok && s.now().Before(g.until) {
		return &closedError{g.reason}
	}
	if v.epoch < s.floor[vmID] {
		return ErrRevoked
	}
	if err := s.roomLocked(Claims{VMID: vmID, Link: v.link}); err != nil {
		return err
	}
	m := s.open[vmID]
	if m == nil {
		m = map[string]*openViewer{}
		s.open[vmID] = m
	}
	m[v.info.ID] = v
	return nil
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

// RevokeVM closes every viewer of vmID with ReasonRevoked and makes every
// link issued for it so far useless: page and socket tokens alike, in
// this process at once and, through the persisted epoch, after restarts.
// Links issued afterwards work. It returns how many viewers it closed.
func (s *Service) RevokeVM(ctx context.Context, vmID string) (int, error) {
	epoch, err := s.epochs.BumpViewerEpoch(ctx, vmID)
	if err != nil {
		return 0, fmt.Errorf("revoke viewers of vm %s: %w", vmID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.floor[vmID] = max(s.floor[vmID], epoch)
	n := 0
	for _, v := range s.open[vmID] {
		if v.epoch < epoch {
			v.closer.Close(ReasonRevoked)
			n++
		}
	}
	return n, nil
}

// OnTransition closes v's viewers when v leaves service: "vm destroyed"
// once it is being stopped (hearth stops VMs only to destroy them), "vm
// failed" when it fails. Viewers of that VM are refused from then on, for
// as long as forgetAfter (the longest a link lives).
func (s *Service) OnTransition(v store.VM, forgetAfter time.Duration) {
	switch v.State {
	case store.StateStopping, store.StateStopped, store.StateDestroyed:
		s.CloseVM(v.ID, ReasonVMDestroyed, forgetAfter)
		if v.State == store.StateDestroyed {
			s.mu.Lock()
			delete(s.floor, v.ID) // the VM's tokens are refused as gone from now on
			s.mu.Unlock()
		}
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

func newViewerID() string { return newID("vwr_") }

// newID is prefix and 64 random bits in hex.
func newID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
