package api

import (
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// The old frontend's /api/auth routes, kept so it can move over without a
// rewrite: the same behaviour as /v1/logins behind the same API keys, with
// the old field names where they meant the same thing. What the old routes
// got wrong stays gone: "success" means the login was recorded and is
// running, sessions are visible only to their owner (or an admin key), and
// no route returns a credential's content.

// compatStatus maps login states to the old session statuses.
var compatStatus = map[store.LoginState]string{
	store.LoginStarting:     "started",
	store.LoginAwaitingUser: "awaiting_user_auth",
	store.LoginCapturing:    "authenticating",
	store.LoginCompleted:    "completed",
	store.LoginFailed:       "failed",
	store.LoginCancelled:    "cancelled",
	store.LoginExpired:      "expired",
}

type compatSession struct {
	SessionID    string    `json:"sessionId"`
	UserID       string    `json:"userId"`
	Provider     string    `json:"provider"`
	BrowserVMID  *string   `json:"browserVMId"`
	NoVNCURL     *string   `json:"novncURL"`
	Status       string    `json:"status"`
	StartedAt    time.Time `json:"startedAt"`
	ErrorMessage string    `json:"error_message,omitempty"`
}

func (s *Server) compatSessionOf(w http.ResponseWriter, r *http.Request, l store.Login) compatSession {
	j := s.withViewer(w, r, l)
	c := compatSession{SessionID: l.ID, UserID: l.UserID, Provider: l.Provider, Status: compatStatus[l.State],
		StartedAt: l.CreatedAt.UTC(), ErrorMessage: l.FailureReason}
	if l.BrowserVMID != "" {
		c.BrowserVMID = &l.BrowserVMID
	}
	if j.Viewer != nil {
		c.NoVNCURL = &j.Viewer.URL
	}
	return c
}

type compatStartRequest struct {
	UserID   string `json:"userId"`
	Provider string `json:"provider"`
}

func (s *Server) compatStart(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	var req compatStartRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	user, err := ownUser(r, req.UserID, "start logins")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, _, err := s.Logins.Start(r.Context(), user, req.Provider)
	if errors.Is(err, errdefs.ErrInvalid) && !slices.Contains(s.Logins.ProviderNames(), req.Provider) {
		writeJSON(w, http.StatusBadRequest, map[string]any{
			"error": errdefs.Public(err), "validProviders": s.Logins.ProviderNames(),
		})
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	c := s.compatSessionOf(w, r, l)
	noStore(w) // the old frontend's answers may carry a viewer link
	writeJSON(w, http.StatusOK, map[string]any{
		"success": true, "sessionId": l.ID, "provider": l.Provider, "novncURL": c.NoVNCURL, "browserIP": nil,
	})
}

func (s *Server) compatSession(w http.ResponseWriter, r *http.Request) {
	if l, ok := s.lookupLogin(w, r); ok {
		noStore(w)
		writeJSON(w, http.StatusOK, map[string]any{"session": s.compatSessionOf(w, r, l)})
	}
}

// compatNoVNC sends the browser to the session's viewer page (a fresh
// link; its token rides in the fragment, which the redirect keeps).
func (s *Server) compatNoVNC(w http.ResponseWriter, r *http.Request) {
	l, ok := s.lookupLogin(w, r)
	if !ok {
		return
	}
	j := s.withViewer(w, r, l)
	if j.Viewer == nil {
		s.fail(w, r, errdefs.Conflictf("session %s is %s: there is no screen to show", l.ID, compatStatus[l.State]))
		return
	}
	noStore(w)
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, j.Viewer.URL, http.StatusFound)
}

func (s *Server) compatCancel(w http.ResponseWriter, r *http.Request) {
	l, ok := s.lookupLogin(w, r)
	if !ok {
		return
	}
	if _, err := s.Logins.Cancel(r.Context(), l.ID); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "message": "Session cancelled"})
}

type compatCredential struct {
	CredentialID string     `json:"credential_id"`
	Provider     string     `json:"provider"`
	IsValid      bool       `json:"is_valid"`
	LastVerified time.Time  `json:"last_verified"`
	ExpiresAt    *time.Time `json:"expires_at"`
}

// compatCredentials lists a user's credentials: metadata only.
func (s *Server) compatCredentials(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	user := r.PathValue("userId")
	if !identity(r).CanSee(user) {
		s.fail(w, r, errdefs.NotFoundf("user %s not found", user))
		return
	}
	cs, err := s.Logins.Credentials(r.Context(), user)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]compatCredential, 0, len(cs))
	for _, c := range cs {
		out = append(out, compatCredential{CredentialID: c.ID, Provider: c.Provider, IsValid: c.Valid,
			LastVerified: c.UpdatedAt.UTC(), ExpiresAt: optTime(c.ExpiresAt)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"credentials": out})
}
