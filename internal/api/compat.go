package api

import (
	"errors"
	"net/http"
	"slices"

	v1 "github.com/hearth-project/hearth/api"
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
var compatStatus = map[store.LoginState]v1.CompatSessionStatus{
	store.LoginStarting:     v1.CompatSessionStatusStarted,
	store.LoginAwaitingUser: v1.CompatSessionStatusAwaitingUserAuth,
	store.LoginCapturing:    v1.CompatSessionStatusAuthenticating,
	store.LoginCompleted:    v1.CompatSessionStatusCompleted,
	store.LoginFailed:       v1.CompatSessionStatusFailed,
	store.LoginCancelled:    v1.CompatSessionStatusCancelled,
	store.LoginExpired:      v1.CompatSessionStatusExpired,
}

func (s *Server) compatSessionOf(w http.ResponseWriter, r *http.Request, l store.Login) v1.CompatSession {
	j := s.withViewer(w, r, l)
	c := v1.CompatSession{SessionID: l.ID, UserID: l.UserID, Provider: l.Provider, Status: compatStatus[l.State],
		StartedAt: l.CreatedAt.UTC(), ErrorMessage: l.FailureReason}
	if l.BrowserVMID != "" {
		c.BrowserVMId = &l.BrowserVMID
	}
	if j.Viewer.URL != "" {
		c.NovncURL = &j.Viewer.URL
	}
	return c
}

// CompatStart starts a login, as POST /v1/logins does.
func (s *Server) CompatStart(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	var req v1.CompatStart
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
		writeJSON(w, http.StatusBadRequest, v1.CompatUnknownProvider{Error: errdefs.Public(err), ValidProviders: s.Logins.ProviderNames()})
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	c := s.compatSessionOf(w, r, l)
	noStore(w) // the old frontend's answers may carry a viewer link
	writeJSON(w, http.StatusOK, v1.CompatStarted{Success: true, SessionID: l.ID, Provider: l.Provider, NovncURL: c.NovncURL})
}

// CompatSession answers a login as the old session object.
func (s *Server) CompatSession(w http.ResponseWriter, r *http.Request, id string) {
	if l, ok := s.lookupLogin(w, r, id); ok {
		noStore(w)
		writeJSON(w, http.StatusOK, v1.CompatSessionAnswer{Session: s.compatSessionOf(w, r, l)})
	}
}

// CompatNoVNC sends the browser to the session's viewer page (a fresh
// link; its token rides in the fragment, which the redirect keeps).
func (s *Server) CompatNoVNC(w http.ResponseWriter, r *http.Request, id string) {
	l, ok := s.lookupLogin(w, r, id)
	if !ok {
		return
	}
	j := s.withViewer(w, r, l)
	if j.Viewer.URL == "" {
		s.fail(w, r, errdefs.Conflictf("session %s is %s: there is no screen to show", l.ID, compatStatus[l.State]))
		return
	}
	noStore(w)
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, j.Viewer.URL, http.StatusFound)
}

// CompatCancel cancels a login.
func (s *Server) CompatCancel(w http.ResponseWriter, r *http.Request, id string) {
	l, ok := s.lookupLogin(w, r, id)
	if !ok {
		return
	}
	if _, err := s.Logins.Cancel(r.Context(), l.ID); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v1.CompatCancelled{Success: true, Message: "Session cancelled"})
}

// CompatCredentials lists a user's credentials: metadata only.
func (s *Server) CompatCredentials(w http.ResponseWriter, r *http.Request, user string) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	if !identity(r).CanSee(user) {
		s.fail(w, r, errdefs.NotFoundf("user %s not found", user))
		return
	}
	cs, err := s.Logins.Credentials(r.Context(), user)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := v1.CompatCredentials{Credentials: make([]v1.CompatCredential, 0, len(cs))}
	for _, c := range cs {
		cc := v1.CompatCredential{CredentialID: c.ID, Provider: c.Provider, IsValid: c.Valid, LastVerified: c.UpdatedAt.UTC()}
		if !c.ExpiresAt.IsZero() {
			t := c.ExpiresAt.UTC()
			cc.ExpiresAt = &t
		}
		out.Credentials = append(out.Credentials, cc)
	}
	writeJSON(w, http.StatusOK, out)
}
