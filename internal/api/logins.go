package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
)

func loginToJSON(l store.Login) v1.Login {
	return v1.Login{ID: l.ID, User: l.UserID, Provider: l.Provider, State: v1.LoginState(l.State), FailureReason: l.FailureReason,
		BrowserVM: l.BrowserVMID, CredentialID: l.CredentialID, CreatedAt: l.CreatedAt.UTC(), UpdatedAt: l.UpdatedAt.UTC(),
		ExpiresAt: l.ExpiresAt.UTC(), CompletedAt: utc(l.CompletedAt)}
}

// withViewer adds a fresh viewer link to a login the user has to act on:
// bound to the login (its session) and no longer-lived than it. The
// answer then carries a token and must not be cached.
func (s *Server) withViewer(w http.ResponseWriter, r *http.Request, l store.Login) v1.Login {
	j := loginToJSON(l)
	if s.Viewers == nil || l.BrowserVMID == "" || (l.State != store.LoginAwaitingUser && l.State != store.LoginCapturing) {
		return j
	}
	ttl := s.ViewerOptions.DefaultTTL
	if left := time.Until(l.ExpiresAt); left < ttl {
		ttl = left
	}
	if ttl < time.Second {
		return j
	}
	g, err := s.Viewers.Issue(r.Context(), l.BrowserVMID, viewer.IssueOptions{TTL: ttl, Session: l.ID})
	if err != nil {
		s.Log.Warn("viewer link for login", "login", l.ID, "err", err)
		return j
	}
	noStore(w)
	link := viewerLink(s.viewerBase(r), l.BrowserVMID, g)
	j.Viewer = link
	return j
}

// ownUser resolves the user a request acts for: a user key's own, or the
// one an admin key names.
func ownUser(r *http.Request, asked, what string) (string, error) {
	id := identity(r)
	switch {
	case !id.Admin() && asked != "" && asked != id.UserID:
		return "", errdefs.Invalidf("a user key can only %s for its own user (%s)", what, id.UserID)
	case asked == "":
		asked = id.UserID
	}
	if asked == "" {
		return "", errdefs.Invalidf("user is required: this admin key belongs to no user")
	}
	return asked, nil
}

// CreateLogin starts a login (or answers the user's active one).
func (s *Server) CreateLogin(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	var req v1.CreateLogin
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	user, err := ownUser(r, req.User, "start logins")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, existing, err := s.Logins.Start(r.Context(), user, req.Provider)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/logins/"+l.ID)
	status := http.StatusCreated
	if existing {
		status = http.StatusOK // the active login for this user and provider
	}
	writeJSON(w, status, s.withViewer(w, r, l))
}

// lookupLogin returns the login in the path if the caller may see it.
func (s *Server) lookupLogin(w http.ResponseWriter, r *http.Request, id string) (store.Login, bool) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return store.Login{}, false
	}
	l, err := s.Logins.Get(r.Context(), id)
	if err == nil && !identity(r).CanSee(l.UserID) {
		err = errdefs.NotFoundf("login %s not found", id)
	}
	if err != nil {
		s.fail(w, r, err)
		return store.Login{}, false
	}
	return l, true
}

// GetLogin answers one login, with a viewer link while the user acts.
func (s *Server) GetLogin(w http.ResponseWriter, r *http.Request, id string) {
	if l, ok := s.lookupLogin(w, r, id); ok {
		writeJSON(w, http.StatusOK, s.withViewer(w, r, l))
	}
}

// ListLogins lists the logins the caller may see.
func (s *Server) ListLogins(w http.ResponseWriter, r *http.Request, params v1.ListLoginsParams) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	f := store.LoginFilter{Provider: value(params.Provider), ActiveOnly: value(params.Active), UserID: value(params.User)}
	if id := identity(r); !id.Admin() {
		f.UserID = id.UserID
	}
	ls, err := s.Logins.List(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := v1.LoginList{Logins: make([]v1.Login, 0, len(ls))}
	for _, l := range ls {
		out.Logins = append(out.Logins, loginToJSON(l))
	}
	writeJSON(w, http.StatusOK, out)
}

// CancelLogin cancels an active login.
func (s *Server) CancelLogin(w http.ResponseWriter, r *http.Request, id string) {
	l, ok := s.lookupLogin(w, r, id)
	if !ok {
		return
	}
	l, err := s.Logins.Cancel(r.Context(), l.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, loginToJSON(l))
}

// loginEvents streams one login's events from its first (or after
// Last-Event-ID) and ends after the one that makes it terminal, or at once
// when the login is over and everything after the resume point is sent.
// LoginEvents streams one login's events until it ends.
func (s *Server) LoginEvents(w http.ResponseWriter, r *http.Request, id string, _ v1.LoginEventsParams) {
	l, ok := s.lookupLogin(w, r, id)
	if !ok {
		return
	}
	after, ok := s.resumePoint(w, r, 0)
	if !ok {
		return
	}
	st := eventStream{
		filter: store.EventFilter{LoginID: l.ID},
		after:  after,
		last:   func(e store.Event) bool { return store.LoginState(e.ToState).Terminal() },
		over: func(ctx context.Context) bool {
			cur, err := s.Logins.Get(ctx, l.ID)
			return err == nil && cur.State.Terminal()
		},
	}
	if r.Header.Get("Last-Event-ID") == "" && r.URL.Query().Get("since") == "" {
		st.first = store.EventLoginCreated
	}
	s.streamEvents(w, r, st)
}

// ListCredentials lists credential metadata.
func (s *Server) ListCredentials(w http.ResponseWriter, r *http.Request, params v1.ListCredentialsParams) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	user := value(params.User)
	if id := identity(r); !id.Admin() {
		if user != "" && user != id.UserID {
			s.fail(w, r, errdefs.NotFoundf("user %s not found", user))
			return
		}
		user = id.UserID
	}
	cs, err := s.Logins.Credentials(r.Context(), user)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	out := v1.CredentialList{Credentials: make([]v1.Credential, 0, len(cs))}
	for _, c := range cs {
		out.Credentials = append(out.Credentials, v1.Credential{ID: c.ID, User: c.UserID, Provider: c.Provider, Login: c.LoginID,
			Valid: c.Valid, CreatedAt: c.CreatedAt.UTC(), UpdatedAt: c.UpdatedAt.UTC(), ExpiresAt: utc(c.ExpiresAt)})
	}
	writeJSON(w, http.StatusOK, out)
}
