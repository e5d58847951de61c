// Package api is hearth's HTTP API (v1), described by api/openapi.yaml. It
// authenticates every request but /healthz, maps error classes to status
// codes (here and nowhere else), and never lets a request's lifetime reach a
// VM's: it only asks the lifecycle manager.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	apispec "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
)

// Server holds the API's dependencies.
type Server struct {
	VMs      *vm.Manager
	Store    store.Store
	Verifier *auth.Verifier
	Log      *slog.Logger
	Version  string
	// Ready reports whether the daemon has finished starting.
	Ready func() bool
	// Viewers bridges browser viewers to guests' VNC servers; nil
	// disables the viewer routes (503).
	Viewers       *viewer.Service
	ViewerOptions ViewerOptions
	// Logins runs provider logins; nil disables the login routes (503).
	Logins *login.Service
	// WriteTimeout bounds delivering a response once the handler starts
	// to answer, and each write of a stream (limits.go); 0: unbounded.
	WriteTimeout time.Duration
	// MaxStreams bounds the streams (event streams, console follows) one
	// user (user keys) or one admin key has open at once; 0: no bound.
	MaxStreams int
	streams    *streamSlots // made by Handler
}

// Route is one registered route, for the spec-conformance test. Public
// routes need no API key (they carry their own tokens, or none).
type Route struct {
	Method, Path string
	Public       bool
}

// Routes lists every route the handler serves.
func (s *Server) Routes() []Route {
	var rs []Route
	for _, r := range s.table() {
		rs = append(rs, Route{r.method, r.path, r.public})
	}
	return rs
}

type route struct {
	method, path string
	public       bool
	h            http.HandlerFunc
}

func (s *Server) table() []route {
	return []route{
		{"GET", "/healthz", true, s.healthz},
		{"GET", "/readyz", false, s.readyz},
		{"GET", "/v1/openapi.yaml", false, s.openapi},
		{"GET", "/v1/host", false, s.host},
		{"GET", "/v1/images", false, s.listImages},
		{"POST", "/v1/vms", false, s.createVM},
		{"GET", "/v1/vms", false, s.listVMs},
		{"GET", "/v1/vms/{id}", false, s.getVM},
		{"DELETE", "/v1/vms/{id}", false, s.deleteVM},
		{"GET", "/v1/vms/{id}/wait", false, s.waitVM},
		{"GET", "/v1/vms/{id}/console", false, s.console},
		{"POST", "/v1/vms/{id}/exec", false, s.execVM},
		{"GET", "/v1/events", false, s.events},
		{"POST", "/v1/vms/{id}/viewer", false, s.createViewer},
		{"DELETE", "/v1/vms/{id}/viewers", false, s.revokeViewers},
		// Viewer routes carry their own tokens instead of API keys.
		{"POST", "/v1/vms/{id}/viewer/ticket", true, s.viewerTicket},
		{"GET", "/v1/vms/{id}/viewer/socket", true, s.viewerSocket},
		{"GET", "/viewer/{id}", true, s.viewerPage},
		{"GET", "/viewer/assets/{path...}", true, s.viewerAsset},
		{"POST", "/v1/logins", false, s.createLogin},
		{"GET", "/v1/logins", false, s.listLogins},
		{"GET", "/v1/logins/{id}", false, s.getLogin},
		{"GET", "/v1/logins/{id}/events", false, s.loginEvents},
		{"POST", "/v1/logins/{id}/cancel", false, s.cancelLogin},
		{"GET", "/v1/credentials", false, s.listCredentials},
		{"GET", "/v1/apikeys", false, s.listAPIKeys},
		{"POST", "/v1/apikeys", false, s.createAPIKey},
		{"DELETE", "/v1/apikeys/{id}", false, s.revokeAPIKey},
		// The old frontend's routes (compat.go).
		{"POST", "/api/auth/start", false, s.compatStart},
		{"GET", "/api/auth/session/{id}", false, s.compatSession},
		{"GET", "/api/auth/session/{id}/novnc", false, s.compatNoVNC},
		{"POST", "/api/auth/session/{id}/cancel", false, s.compatCancel},
		{"GET", "/api/auth/credentials/{userId}", false, s.compatCredentials},
	}
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	s.streams = &streamSlots{open: map[string]int{}, reads: map[string]chan struct{}{}}
	mux := http.NewServeMux()
	methods := map[string][]string{}
	public := map[string]bool{}
	for _, r := range s.table() {
		h := r.h
		if !r.public {
			h = s.authenticate(h)
		}
		mux.HandleFunc(r.method+" "+r.path, h)
		methods[r.path] = append(methods[r.path], r.method)
		public[r.path] = r.public
	}
	// A known path with another method: a JSON 405 naming what is allowed.
	for path, ms := range methods {
		allow := strings.Join(ms, ", ")
		h := func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path+" (allowed: "+allow+")")
		}
		if !public[path] {
			h = s.authenticate(h)
		}
		mux.HandleFunc(path, h)
	}
	// Anything else: JSON 404/405 instead of the mux's plain text, but only
	// after authentication, so unauthenticated callers learn nothing.
	mux.HandleFunc("/", s.authenticate(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no route "+r.Method+" "+r.URL.Path)
	}))
	return s.logRequests(s.bound(s.recoverPanics(mux)))
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (SSE, console follow) flush through.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type reqIDKey struct{}

func newRequestID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// logRequests gives every request an id (echoed as X-Request-Id) and logs
// one line per request. It never logs the Authorization header.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := newRequestID()
		w.Header().Set("X-Request-Id", id)
		rec := &statusRecorder{ResponseWriter: w}
		start := time.Now()
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), reqIDKey{}, id)))
		s.Log.Info("http request", "request_id", id, "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "duration_ms", time.Since(start).Milliseconds())
	})
}

func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Log.Error("handler panic", "request_id", requestID(r), "panic", v)
				writeError(w, http.StatusInternalServerError, "internal", "internal error (request "+requestID(r)+")")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(reqIDKey{}).(string)
	return id
}

// authenticate requires a valid API key.
func (s *Server) authenticate(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hearth"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key: send Authorization: Bearer <key>")
			return
		}
		id, err := s.Verifier.Verify(r.Context(), tok)
		if errors.Is(err, auth.ErrUnauthenticated) {
			msg := "invalid API key"
			switch {
			case errors.Is(err, auth.ErrRevoked):
				msg = "API key revoked"
			case errors.Is(err, auth.ErrExpired):
				msg = "API key expired"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="hearth", error="invalid_token", error_description="`+msg+`"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", msg)
			return
		}
		if err != nil {
			s.fail(w, r, err) // a busy or full store is a 503
			return
		}
		next(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
	}
}

func identity(r *http.Request) auth.Identity {
	id, _ := auth.FromContext(r.Context())
	return id
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.Store.Ping(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "store not answering")
		return
	}
	if s.Ready != nil && !s.Ready() {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "starting")
		return
	}
	// A full disk fails every user's writes: take this node out first.
	if err := s.VMs.CheckDiskSpace(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", errdefs.Public(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(apispec.OpenAPI)
}

type hostInfo struct {
	Version      string           `json:"version"`
	Driver       string           `json:"driver"`
	Capabilities vmm.Capabilities `json:"capabilities"`
}

func (s *Server) host(w http.ResponseWriter, r *http.Request) {
	d := s.VMs.Driver()
	writeJSON(w, http.StatusOK, hostInfo{Version: s.Version, Driver: d.Name(), Capabilities: d.Capabilities()})
}

type imageJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Status    string    `json:"status"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := s.Store.ListImages(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]imageJSON, 0, len(imgs))
	for _, i := range imgs {
		out = append(out, imageJSON{ID: i.ID, Name: i.Name, Role: i.Role, Status: string(i.Status), SizeBytes: i.SizeBytes, CreatedAt: i.CreatedAt})
	}
	writeJSON(w, http.StatusOK, map[string]any{"images": out})
}
