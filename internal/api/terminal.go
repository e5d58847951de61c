package api

import (
	"io/fs"
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/terminal"
)

// TerminalOptions configure the terminal routes.
type TerminalOptions struct {
	// TTL is a terminal link's lifetime.
	TTL time.Duration
	// Assets hold terminal.html, its scripts and xterm.js; AssetsErr
	// says why they cannot be served (nil if they can).
	Assets    fs.FS
	AssetsErr error
}

var errTerminalsOff = errdefs.Unavailablef("terminals are not enabled on this server")

func (s *Server) terminalAssets() pageAssets {
	return pageAssets{what: "terminal", page: "terminal.html", files: s.TerminalOptions.Assets, err: s.TerminalOptions.AssetsErr,
		inlineStyles: true}
}

// CreateTerminal finds or starts the VM's terminal session and answers a
// link to it.
func (s *Server) CreateTerminal(w http.ResponseWriter, r *http.Request, id string) {
	var req v1.CreateTerminal
	if err := decodeJSONOptional(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if s.Terminals == nil {
		s.fail(w, r, errTerminalsOff)
		return
	}
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	link, err := s.Terminals.Open(r.Context(), v.ID, terminal.Request{
		Cols: req.Cols, Rows: req.Rows, User: req.User, Command: req.Command, TTL: s.TerminalOptions.TTL,
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page := s.viewerBase(r).JoinPath("terminal", v.ID)
	page.Fragment = "token=" + link.PageToken
	status := http.StatusOK
	if link.Created {
		status = http.StatusCreated
	}
	s.Log.Info("terminal link issued", "request_id", requestID(r), "vm", v.ID, "process", link.ProcessID, "created", link.Created)
	noStore(w)
	writeJSON(w, status, v1.Terminal{URL: page.String(), ExpiresAt: link.Expires.UTC(), ProcessID: link.ProcessID})
}

// TerminalTicket trades a terminal page token for a single-use socket URL.
func (s *Server) TerminalTicket(w http.ResponseWriter, r *http.Request, id string) {
	noStore(w)
	if s.Terminals == nil {
		s.fail(w, r, errTerminalsOff)
		return
	}
	tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hearth-terminal"`)
		writeError(w, http.StatusUnauthorized, "invalid_token", "missing terminal token: send Authorization: Bearer <page token>")
		return
	}
	sock, claims, err := s.Terminals.Links().Ticket(r.Context(), tok, id, s.clientAddr(r))
	if err != nil {
		s.ticketRefused(w, r, id, "terminal", err)
		return
	}
	v, err := s.VMs.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch v.State {
	case store.StateReady:
	case store.StatePending, store.StateBooting:
		s.fail(w, r, errdefs.Conflictf("vm %s is %s; its terminal is not up yet", id, v.State))
		return
	default:
		s.fail(w, r, errdefs.NotFoundf("vm %s is %s; it has no terminal any more", id, v.State))
		return
	}
	writeJSON(w, http.StatusOK, v1.TerminalTicket{
		WebsocketURL: wsURL(s.viewerBase(r), sock, "v1", "vms", id, "terminal", "socket"),
		ExpiresAt:    claims.Expires.UTC(), LinkExpiresAt: claims.LinkEnd().UTC(), ProcessID: claims.Session,
	})
}

// TerminalSocket is the terminal page's WebSocket; the token is checked
// before anything reaches the guest.
func (s *Server) TerminalSocket(w http.ResponseWriter, r *http.Request, id string, params v1.TerminalSocketParams) {
	if s.Terminals == nil {
		s.fail(w, r, errTerminalsOff)
		return
	}
	var origins []string
	if base := s.viewerBase(r); base.Host != r.Host {
		origins = []string{base.Host}
	}
	s.Terminals.ServeSocket(w, r, id, value(params.Token), origins)
}

// AttachProcess bridges an API client's WebSocket to a process of the VM.
func (s *Server) AttachProcess(w http.ResponseWriter, r *http.Request, id, pid string, params v1.AttachProcessParams) {
	if s.Terminals == nil {
		s.fail(w, r, errTerminalsOff)
		return
	}
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	if err := s.Terminals.Attach(w, r, v.ID, pid, params.Offset); err != nil {
		s.fail(w, r, err)
	}
}

// TerminalPage serves the xterm.js page. It needs no credentials: the
// page token is in the URL fragment, which browsers never send.
func (s *Server) TerminalPage(w http.ResponseWriter, r *http.Request, _ string) {
	s.servePage(w, r, s.terminalAssets())
}

// TerminalAsset serves the terminal page's scripts, styles and xterm.js.
func (s *Server) TerminalAsset(w http.ResponseWriter, r *http.Request, name string) {
	s.serveAsset(w, r, s.terminalAssets(), name)
}
