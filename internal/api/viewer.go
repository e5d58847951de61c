package api

import (
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
)

// ViewerOptions configure the browser viewer routes.
type ViewerOptions struct {
	// PublicURL, if set, is the base of every viewer link.
	PublicURL *url.URL
	// TrustForwarded takes scheme, host and prefix from X-Forwarded-* or
	// Forwarded headers when PublicURL is nil.
	TrustForwarded bool
	DefaultTTL     time.Duration
	MaxTTL         time.Duration
	// VNCPort is the guest port viewers reach; only roles that wait for it
	// can be viewed.
	VNCPort int
	// FrameAncestors go into the page's CSP frame-ancestors ('none' if
	// empty).
	FrameAncestors []string
	// Assets hold viewer.html, its scripts and noVNC; AssetsErr says why
	// they cannot be served (e.g. noVNC not built), nil if they can.
	Assets    fs.FS
	AssetsErr error
}

// withViewers adds v's open viewers to its answer.
func (s *Server) withViewers(j v1.VM) v1.VM {
	if s.Viewers == nil || !s.VMs.Serves(j.Role, s.ViewerOptions.VNCPort) {
		return j
	}
	open := s.Viewers.Open(j.ID)
	j.Viewers = make([]v1.ViewerInfo, 0, len(open))
	for _, o := range open {
		j.Viewers = append(j.Viewers, v1.ViewerInfo{ID: o.ID, OpenedAt: o.OpenedAt, ViewOnly: o.ViewOnly, Session: o.Session, Remote: o.Remote})
	}
	return j
}

// servesScreen refuses a VM whose role serves no VNC screen.
func (s *Server) servesScreen(v store.VM) error {
	if !s.VMs.Serves(v.Role, s.ViewerOptions.VNCPort) {
		return errdefs.Conflictf("vm %s has role %s, which serves no VNC screen (port %d) to view", v.ID, v.Role, s.ViewerOptions.VNCPort)
	}
	return nil
}

// viewable refuses VMs that cannot be viewed now or later.
func (s *Server) viewable(v store.VM) error {
	if s.Viewers == nil {
		return errViewersOff
	}
	if err := s.servesScreen(v); err != nil {
		return err
	}
	switch v.State {
	case store.StatePending, store.StateBooting, store.StateReady:
		return nil
	}
	return errdefs.Conflictf("vm %s is %s: it has no screen to view", v.ID, v.State)
}

// CreateViewer issues a link to a VM's screen.
func (s *Server) CreateViewer(w http.ResponseWriter, r *http.Request, id string) {
	var req v1.CreateViewer
	if err := decodeJSONOptional(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	ttl := s.ViewerOptions.DefaultTTL
	if req.TTLSeconds != 0 {
		// Range first (the maximum is configured, so the document cannot
		// say it): ttl_seconds * time.Second must not overflow.
		maxTTL := int(s.ViewerOptions.MaxTTL / time.Second)
		if req.TTLSeconds < 1 || req.TTLSeconds > maxTTL {
			s.fail(w, r, errdefs.Invalidf("field \"ttl_seconds\" must be between 1 and %d (viewer.max_token_ttl), got %d", maxTTL, req.TTLSeconds))
			return
		}
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	if err := s.viewable(v); err != nil {
		s.fail(w, r, err)
		return
	}
	g, err := s.Viewers.Issue(r.Context(), v.ID, viewer.IssueOptions{TTL: ttl, ViewOnly: req.ViewOnly})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	noStore(w)
	writeJSON(w, http.StatusCreated, viewerLink(s.viewerBase(r), v.ID, g))
}

// noStore keeps an answer that carries viewer tokens out of every cache.
func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
}

// viewerLink is the answer for grant g on vmID's screen: the page, its
// token in the fragment (never sent to a server, so never logged), and the
// single-use socket URL.
func viewerLink(base *url.URL, vmID string, g viewer.Grant) v1.Viewer {
	page := base.JoinPath("viewer", vmID)
	page.Fragment = "token=" + g.PageToken
	return v1.Viewer{URL: page.String(), WebsocketURL: socketURL(base, vmID, g.SocketToken),
		WebsocketURLExpiresAt: g.SocketExpires.UTC(), ExpiresAt: g.Expires.UTC(), ViewOnly: g.ViewOnly}
}

// socketURL is the WebSocket URL of vmID's viewer socket with token.
func socketURL(base *url.URL, vmID, token string) string {
	return wsURL(base, token, "v1", "vms", vmID, "viewer", "socket")
}

// wsURL is the WebSocket URL at base's path joined with elem, with token.
func wsURL(base *url.URL, token string, elem ...string) string {
	u := base.JoinPath(elem...)
	u.Scheme = map[string]string{"https": "wss"}[base.Scheme]
	if u.Scheme == "" {
		u.Scheme = "ws"
	}
	u.RawQuery = url.Values{"token": {token}}.Encode()
	return u.String()
}

// viewerBase is the URL browsers reach hearth at: the configured public
// URL, else the (trusted) forwarded headers, else the request itself.
func (s *Server) viewerBase(r *http.Request) *url.URL {
	if s.ViewerOptions.PublicURL != nil {
		u := *s.ViewerOptions.PublicURL
		return &u
	}
	u := &url.URL{Scheme: "http", Host: r.Host}
	if r.TLS != nil {
		u.Scheme = "https"
	}
	if !s.ViewerOptions.TrustForwarded {
		return u
	}
	proto, host := forwarded(r.Header.Get("Forwarded"))
	if proto == "" {
		proto = firstValue(r.Header.Get("X-Forwarded-Proto"))
	}
	if host == "" {
		host = firstValue(r.Header.Get("X-Forwarded-Host"))
	}
	if proto == "http" || proto == "https" {
		u.Scheme = proto
	}
	if validHost(host) {
		u.Host = host
	}
	if p := firstValue(r.Header.Get("X-Forwarded-Prefix")); strings.HasPrefix(p, "/") && !strings.ContainsAny(p, "?#\\ ") {
		u.Path = strings.TrimSuffix(path.Clean(p), "/")
	}
	return u
}

// forwarded reads proto and host from the first element of an RFC 7239
// Forwarded header.
func forwarded(h string) (proto, host string) {
	first, _, _ := strings.Cut(h, ",")
	for _, pair := range strings.Split(first, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"`)
		switch strings.ToLower(k) {
		case "proto":
			proto = strings.ToLower(v)
		case "host":
			host = v
		}
	}
	return proto, host
}

func firstValue(h string) string {
	v, _, _ := strings.Cut(h, ",")
	return strings.TrimSpace(v)
}

// validHost accepts host or host:port and nothing that could smuggle a
// path, credentials or another URL.
func validHost(h string) bool {
	if h == "" || strings.ContainsAny(h, "/\\@?# ") {
		return false
	}
	u, err := url.Parse("http://" + h)
	return err == nil && u.Host == h
}

// pageCSP is a page's content security policy: its own scripts and
// styles only (and with inlineStyles, style elements its scripts add),
// WebSocket to hearth, no plugins or forms.
func (s *Server) pageCSP(base *url.URL, inlineStyles bool) string {
	style := "style-src 'self'; "
	if inlineStyles {
		style = "style-src 'self' 'unsafe-inline'; "
	}
	ws := "ws://" + base.Host
	if base.Scheme == "https" {
		ws = "wss://" + base.Host
	}
	ancestors := "'none'"
	if len(s.ViewerOptions.FrameAncestors) > 0 {
		ancestors = strings.Join(s.ViewerOptions.FrameAncestors, " ")
	}
	return "default-src 'none'; script-src 'self'; " + style + "img-src 'self' data: blob:; " +
		"connect-src 'self' " + ws + "; frame-ancestors " + ancestors + "; base-uri 'none'; form-action 'none'"
}

// viewerHeaders are set on every viewer page and asset.
func viewerHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// pageAssets are a browser page's files: what, for errors ("viewer"),
// its HTML file, and why they cannot be served (nil if they can).
type pageAssets struct {
	what, page string
	files      fs.FS
	err        error
	// inlineStyles lets the page's scripts add <style> elements
	// (xterm.js sizes and colours its screen so); scripts stay the page's
	// own.
	inlineStyles bool
}

func (a pageAssets) check() error {
	if a.files == nil {
		return errdefs.Unavailablef("the %s page is not available on this server", a.what)
	}
	if a.err != nil {
		return errdefs.Unavailablef("the %s page is not available: %v", a.what, a.err)
	}
	return nil
}

func (s *Server) viewerAssets() pageAssets {
	return pageAssets{what: "viewer", page: "viewer.html", files: s.ViewerOptions.Assets, err: s.ViewerOptions.AssetsErr}
}

// ViewerPage serves the noVNC page. It needs no credentials: the page
// token is in the URL fragment, which browsers never send.
func (s *Server) ViewerPage(w http.ResponseWriter, r *http.Request, _ string) {
	s.servePage(w, r, s.viewerAssets())
}

// servePage serves a page whose token is in the URL fragment, under the
// strict CSP.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request, a pageAssets) {
	if err := a.check(); err != nil {
		s.fail(w, r, err)
		return
	}
	page, err := fs.ReadFile(a.files, a.page)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	viewerHeaders(w)
	w.Header().Set("Content-Security-Policy", s.pageCSP(s.viewerBase(r), a.inlineStyles))
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(page)
}

// ViewerAsset serves the page's scripts, styles and noVNC.
func (s *Server) ViewerAsset(w http.ResponseWriter, r *http.Request, name string) {
	s.serveAsset(w, r, s.viewerAssets(), name)
}

// serveAsset serves one of a page's files.
func (s *Server) serveAsset(w http.ResponseWriter, r *http.Request, a pageAssets, name string) {
	if err := a.check(); err != nil {
		s.fail(w, r, err)
		return
	}
	if !fs.ValidPath(name) || name == "." || strings.HasSuffix(name, "/") {
		writeError(w, http.StatusNotFound, "not_found", "no "+a.what+" asset "+name)
		return
	}
	data, err := fs.ReadFile(a.files, name)
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", "no "+a.what+" asset "+name)
		return
	}
	ctype := mime.TypeByExtension(path.Ext(name))
	switch {
	case ctype != "":
	case path.Ext(name) == "":
		ctype = "text/plain; charset=utf-8" // LICENSE, README
	default:
		ctype = "application/octet-stream"
	}
	viewerHeaders(w)
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(data)
}

// ViewerTicket trades the page token (Authorization: Bearer) for a
// single-use socket URL, so the page can connect and reconnect until its
// link expires.
func (s *Server) ViewerTicket(w http.ResponseWriter, r *http.Request, id string) {
	noStore(w)
	if s.Viewers == nil {
		s.fail(w, r, errViewersOff)
		return
	}
	tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hearth-viewer"`)
		writeError(w, http.StatusUnauthorized, "invalid_token", "missing viewer token: send Authorization: Bearer <page token>")
		return
	}
	sock, claims, err := s.Viewers.Ticket(r.Context(), tok, id, s.clientAddr(r))
	if err != nil {
		s.ticketRefused(w, r, id, "viewer", err)
		return
	}
	v, err := s.VMs.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch v.State {
	case store.StatePending, store.StateBooting:
		s.fail(w, r, errdefs.Conflictf("vm %s is %s; its screen is not up yet", id, v.State))
		return
	case store.StateReady:
	default:
		s.fail(w, r, errdefs.NotFoundf("vm %s is %s; it has no screen any more", id, v.State))
		return
	}
	writeJSON(w, http.StatusOK, v1.ViewerTicket{
		WebsocketURL: socketURL(s.viewerBase(r), id, sock), ExpiresAt: claims.Expires.UTC(),
		LinkExpiresAt: claims.LinkEnd().UTC(), ViewOnly: claims.ViewOnly,
	})
}

// ticketRefused answers a refused ticket: 429 with Retry-After for a
// rate limit, 409 for a link or VM with all the viewers it may have, 401
// for a token that buys nothing (saying whether the link expired or was
// revoked).
func (s *Server) ticketRefused(w http.ResponseWriter, r *http.Request, id, what string, err error) {
	var (
		rl *viewer.RateLimitError
		le *viewer.LimitError
	)
	switch {
	case errors.As(err, &rl):
		secs := setRetryAfter(w, rl.RetryAfter)
		writeError(w, http.StatusTooManyRequests, "rate_limited",
			fmt.Sprintf("too many %s tickets for this %s: retry in %d s", what, rl.What, secs))
	case errors.As(err, &le):
		writeError(w, http.StatusConflict, "viewer_limit", le.Error()+": close one, then reconnect")
	case errors.Is(err, viewer.ErrRevoked):
		w.Header().Set("WWW-Authenticate", `Bearer realm="hearth-`+what+`", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "link_revoked", "the vm's "+what+" links were revoked: ask for a new one")
	case errors.Is(err, viewer.ErrExpired):
		w.Header().Set("WWW-Authenticate", `Bearer realm="hearth-`+what+`", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "token_expired", "this "+what+" link has expired: ask for a new one")
	case errors.Is(err, viewer.ErrMalformed), errors.Is(err, viewer.ErrForged),
		errors.Is(err, viewer.ErrWrongVM), errors.Is(err, viewer.ErrWrongKind):
		w.Header().Set("WWW-Authenticate", `Bearer realm="hearth-`+what+`", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "invalid_token", "this "+what+" link is not valid for vm "+id)
	default:
		s.fail(w, r, err)
	}
}

// clientAddr is the address a request came from, for rate limits: the
// peer, or with trusted forwarded headers the address the proxy saw (the
// last X-Forwarded-For element it appended, else Forwarded's for=).
func (s *Server) clientAddr(r *http.Request) string {
	if s.ViewerOptions.TrustForwarded {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(xff[len(xff)-1], ",")
			if a := strings.TrimSpace(parts[len(parts)-1]); a != "" {
				return a
			}
		}
		if fw := r.Header.Values("Forwarded"); len(fw) > 0 {
			elems := strings.Split(fw[len(fw)-1], ",")
			for _, pair := range strings.Split(elems[len(elems)-1], ";") {
				if k, v, ok := strings.Cut(strings.TrimSpace(pair), "="); ok && strings.EqualFold(k, "for") {
					return strings.Trim(v, `"`)
				}
			}
		}
	}
	return r.RemoteAddr
}

// RevokeViewers closes every viewer of a VM and revokes every viewer link
// issued for it so far (owner or admin); links asked for afterwards work.
func (s *Server) RevokeViewers(w http.ResponseWriter, r *http.Request, id string) {
	if s.Viewers == nil {
		s.fail(w, r, errViewersOff)
		return
	}
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	if err := s.servesScreen(v); err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.Viewers.RevokeVM(r.Context(), v.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.Log.Info("viewers revoked", "request_id", requestID(r), "vm", v.ID, "closed", n)
	writeJSON(w, http.StatusOK, v1.RevokedViewers{VM: v.ID, Closed: n})
}

// ViewerSocket is the viewer's WebSocket. The token is checked by the
// viewer service before anything reaches the guest; refusals arrive as
// close frames with a reason the page can show.
func (s *Server) ViewerSocket(w http.ResponseWriter, r *http.Request, id string, params v1.ViewerSocketParams) {
	if s.Viewers == nil {
		s.fail(w, r, errViewersOff)
		return
	}
	var origins []string
	if base := s.viewerBase(r); base.Host != r.Host {
		origins = []string{base.Host}
	}
	s.Viewers.ServeSocket(w, r, id, value(params.Token), origins)
}
