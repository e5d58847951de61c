// Package fakeauth is a fake OAuth 2.0 authorization server for hearth's
// provider login tests: the authorization-code flow with PKCE that the AI
// coding CLIs use, with a loopback redirect.
//
//	GET  /authorize        an HTML page with an Approve (and a Deny) button
//	POST /authorize/decide the page's form: 302 to redirect_uri?code=…&state=…
//	POST /approve?state=…  the same approval without a browser; answers
//	                       {"redirect_url": "…"} for the test to follow
//	POST /token            exchanges a code (single use, PKCE checked) for
//	                       {access_token, refresh_token, expires_in, token_type}
//	GET  /debug/log        what happened, as JSON (also Server.Events)
//
// Only loopback redirect URIs (http://127.0.0.1, http://localhost, http://[::1])
// are accepted, like the real CLIs' registrations.
package fakeauth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Event kinds recorded in the log.
const (
	EventAuthorize = "authorize" // GET /authorize accepted
	EventApprove   = "approve"   // approved (page or API); a code was issued
	EventDeny      = "deny"      // denied on the page
	EventToken     = "token"     // a code was exchanged for tokens
	EventRejected  = "rejected"  // a request was refused (Detail says why)
)

// Event is one thing the server saw. It never holds a code or a token.
type Event struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Path        string    `json:"path"`
	ClientID    string    `json:"client_id,omitempty"`
	State       string    `json:"state,omitempty"`
	RedirectURI string    `json:"redirect_uri,omitempty"`
	Detail      string    `json:"detail,omitempty"`
}

// Options configure a Server.
type Options struct {
	// ClientID is the only client accepted ("" = "fake").
	ClientID string
	// TokenLifetime is the access tokens' expires_in (0 = one hour).
	TokenLifetime time.Duration
	// Now is the clock (nil = time.Now).
	Now func() time.Time
}

// Server is the fake authorization server; it is an http.Handler.
type Server struct {
	opts Options
	mux  *http.ServeMux

	mu      sync.Mutex
	pending map[string]*authRequest // by state: authorized, not yet decided
	codes   map[string]*authRequest // by code: issued, not yet exchanged
	used    map[string]bool         // codes already exchanged
	events  []Event
}

// authRequest is one GET /authorize.
type authRequest struct {
	clientID, redirectURI, state string
	challenge, method            string
}

// New returns a server.
func New(opts Options) *Server {
	if opts.ClientID == "" {
		opts.ClientID = "fake"
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, mux: http.NewServeMux(),
		pending: map[string]*authRequest{}, codes: map[string]*authRequest{}, used: map[string]bool{}}
	s.mux.HandleFunc("GET /authorize", s.authorize)
	s.mux.HandleFunc("POST /authorize/decide", s.decide)
	s.mux.HandleFunc("POST /approve", s.approveAPI)
	s.mux.HandleFunc("POST /token", s.token)
	s.mux.HandleFunc("GET /debug/log", s.debugLog)
	return s
}

// ServeHTTP serves the endpoints above.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Events returns what happened so far, oldest first.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// Pending returns the states of authorizations awaiting a decision.
func (s *Server) Pending() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var states []string
	for st := range s.pending {
		states = append(states, st)
	}
	return states
}

// Approve approves the pending authorization with this state, as a
// person pressing Approve would, and returns the URL the browser is
// redirected to (redirect_uri?code=…&state=…).
func (s *Server) Approve(state string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.approveLocked(state, "/approve")
}

func (s *Server) approveLocked(state, path string) (string, error) {
	ar, ok := s.pending[state]
	if !ok {
		s.logLocked(Event{Kind: EventRejected, Path: path, State: state, Detail: "no pending authorization with this state"})
		return "", errors.New("no pending authorization with this state")
	}
	delete(s.pending, state)
	code := "fake-code-" + randomHex(16)
	s.codes[code] = ar
	s.logLocked(Event{Kind: EventApprove, Path: path, ClientID: ar.clientID, State: state, RedirectURI: ar.redirectURI})
	u, _ := url.Parse(ar.redirectURI) // parsed at /authorize
	q := u.Query()
	q.Set("code", code)
	q.Set("state", state)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (s *Server) log(e Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logLocked(e)
}

func (s *Server) logLocked(e Event) {
	e.Time = s.opts.Now()
	s.events = append(s.events, e)
}

var page = template.Must(template.New("authorize").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Fake sign-in</title>
<style>body{font-family:sans-serif;margin:4em;background:#f4f4f4}button{font-size:2em;padding:.5em 2em;margin:.5em}</style>
</head><body>
<h1 id="title">Fake sign-in</h1>
<p><b>{{.ClientID}}</b> wants to sign in with your fake account.</p>
<form method="post" action="/authorize/decide">
<input type="hidden" name="state" value="{{.State}}">
<button id="approve" type="submit" name="decision" value="approve">Approve</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button>
</form>
</body></html>
`))

// authorize validates an authorization request and shows the page.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ar := &authRequest{clientID: q.Get("client_id"), redirectURI: q.Get("redirect_uri"), state: q.Get("state"),
		challenge: q.Get("code_challenge"), method: q.Get("code_challenge_method")}
	reject := func(msg string) {
		s.log(Event{Kind: EventRejected, Path: "/authorize", ClientID: ar.clientID, State: ar.state, RedirectURI: ar.redirectURI, Detail: msg})
		http.Error(w, msg, http.StatusBadRequest)
	}
	switch {
	case ar.clientID != s.opts.ClientID:
		reject(fmt.Sprintf("unknown client_id (want %s)", s.opts.ClientID))
		return
	case q.Get("response_type") != "" && q.Get("response_type") != "code":
		reject("response_type must be code")
		return
	case ar.state == "":
		reject("state is required")
		return
	case ar.challenge != "" && ar.method != "S256":
		reject("code_challenge_method must be S256")
		return
	}
	if err := loopbackRedirect(ar.redirectURI); err != nil {
		reject(err.Error())
		return
	}
	s.mu.Lock()
	s.pending[ar.state] = ar
	s.logLocked(Event{Kind: EventAuthorize, Path: "/authorize", ClientID: ar.clientID, State: ar.state, RedirectURI: ar.redirectURI})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = page.Execute(w, struct{ ClientID, State string }{ar.clientID, ar.state})
}

// loopbackRedirect accepts only http redirect URIs on a loopback host.
func loopbackRedirect(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return errors.New("redirect_uri must be an http:// loopback URL")
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return errors.New("redirect_uri must be on a loopback host")
	}
	return nil
}

// decide handles the page's form.
func (s *Server) decide(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	state := r.PostForm.Get("state")
	if r.PostForm.Get("decision") == "deny" {
		s.mu.Lock()
		ar, ok := s.pending[state]
		delete(s.pending, state)
		s.logLocked(Event{Kind: EventDeny, Path: "/authorize/decide", State: state})
		s.mu.Unlock()
		if !ok {
			http.Error(w, "no pending authorization with this state", http.StatusBadRequest)
			return
		}
		u, _ := url.Parse(ar.redirectURI)
		q := u.Query()
		q.Set("error", "access_denied")
		q.Set("state", state)
		u.RawQuery = q.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
		return
	}
	s.mu.Lock()
	target, err := s.approveLocked(state, "/authorize/decide")
	s.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, target, http.StatusFound)
}

// approveAPI approves without a browser.
func (s *Server) approveAPI(w http.ResponseWriter, r *http.Request) {
	target, err := s.Approve(r.URL.Query().Get("state"))
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"redirect_url": target})
}

// token exchanges an authorization code.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	f := r.PostForm
	fail := func(code, why string) {
		s.log(Event{Kind: EventRejected, Path: "/token", ClientID: f.Get("client_id"), Detail: why})
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": why})
	}
	if f.Get("grant_type") != "authorization_code" {
		fail("unsupported_grant_type", "grant_type must be authorization_code")
		return
	}
	code := f.Get("code")
	s.mu.Lock()
	ar, ok := s.codes[code]
	used := s.used[code]
	if ok {
		delete(s.codes, code) // single use, whatever the outcome
		s.used[code] = true
	}
	s.mu.Unlock()
	switch {
	case used:
		fail("invalid_grant", "code already used")
		return
	case !ok:
		fail("invalid_grant", "unknown code")
		return
	case f.Get("client_id") != ar.clientID:
		fail("invalid_client", "client_id does not match the authorization")
		return
	case f.Get("redirect_uri") != ar.redirectURI:
		fail("invalid_grant", "redirect_uri does not match the authorization")
		return
	case ar.challenge != "" && pkceChallenge(f.Get("code_verifier")) != ar.challenge:
		fail("invalid_grant", "code_verifier does not match the code_challenge")
		return
	}
	s.log(Event{Kind: EventToken, Path: "/token", ClientID: ar.clientID, State: ar.state, RedirectURI: ar.redirectURI})
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  "fake-at-" + randomHex(24),
		"refresh_token": "fake-rt-" + randomHex(24),
		"expires_in":    int64(s.opts.TokenLifetime / time.Second),
		"token_type":    "Bearer",
	})
}

func (s *Server) debugLog(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Events())
}

// pkceChallenge is the S256 code challenge of a verifier.
func pkceChallenge(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
