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

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/imagereg"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/terminal"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/vm"
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
	// Terminals runs terminal sessions and process attaches; nil
	// disables those routes (503).
	Terminals       *terminal.Service
	TerminalOptions TerminalOptions
	// Logins runs provider logins; nil disables the login routes (503).
	Logins *login.Service
	// Providers are the AI CLIs prompts can run; nil disables the prompt
	// route (503). WorkspaceUser is whom prompts run as (default
	// workapi.DefaultUser): the user logins install credentials for.
	Providers     *provider.Registry
	WorkspaceUser string
	// Images inspects, verifies and removes the store's images; nil
	// disables those routes (503).
	Images *imagereg.Registry
	// Builds runs image builds; nil disables the build routes and
	// collection (503).
	Builds *imagebuild.Service
	// WriteTimeout bounds delivering a response once the handler starts
	// to answer, and each write of a stream (limits.go); 0: unbounded.
	WriteTimeout time.Duration
	// ReadTimeout bounds the wait for each part of a streamed request
	// body (an upload, a process's stdin), which as a whole may take as
	// long as it needs; 0: unbounded.
	ReadTimeout time.Duration
	// MaxStreams bounds the streams (event streams, console follows) one
	// user (user keys) or one admin key has open at once; 0: no bound.
	MaxStreams int
	streams    *streamSlots // made by Handler
}

// Route is one served operation, for the spec-conformance test. Public
// routes need no API key (they carry their own tokens, or none).
type Route struct {
	Method, Path string
	Public       bool
}

// Routes lists every route the handler serves.
func (s *Server) Routes() []Route {
	rt, err := s.routes()
	if err != nil {
		panic(err)
	}
	var rs []Route
	for _, o := range rt.ops {
		_, path, _ := strings.Cut(o.pattern, " ")
		rs = append(rs, Route{o.method, path, o.public})
	}
	return rs
}

// Server implements the operations of api/openapi.yaml.
var _ v1.ServerInterface = (*Server)(nil)

// Handler returns the API's HTTP handler: every operation of the
// document (operations.go).
func (s *Server) Handler() http.Handler {
	s.streams = &streamSlots{open: map[string]int{}, reads: map[string]chan struct{}{}}
	rt, err := s.routes()
	if err != nil {
		panic("api: the generated routes do not match openapi.yaml: " + err.Error())
	}
	return s.logRequests(s.bound(s.recoverPanics(rt)))
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

// Healthz answers that the daemon answers.
func (s *Server) Healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, v1.Status{Status: "ok"})
}

// Readyz answers whether the daemon can take work.
func (s *Server) Readyz(w http.ResponseWriter, r *http.Request) {
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
	writeJSON(w, http.StatusOK, v1.Status{Status: "ready"})
}

// GetOpenAPI serves the document.
func (s *Server) GetOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(v1.OpenAPI)
}

// GetHost answers the driver and what it can do.
func (s *Server) GetHost(w http.ResponseWriter, r *http.Request) {
	d := s.VMs.Driver()
	c := d.Capabilities()
	writeJSON(w, http.StatusOK, v1.Host{Version: s.Version, Driver: d.Name(), Capabilities: v1.Capabilities{
		Accel: v1.CapabilitiesAccel(c.Accel), AgentTransport: c.AgentTransport, DiskCloning: c.DiskCloning,
		GracefulStop: c.GracefulStop, Pause: c.Pause, Snapshot: c.Snapshot}})
}
