package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
)

type loginJSON struct {
	ID            string      `json:"id"`
	User          string      `json:"user"`
	Provider      string      `json:"provider"`
	State         string      `json:"state"`
	FailureReason string      `json:"failure_reason,omitempty"`
	BrowserVM     string      `json:"browser_vm,omitempty"`
	CredentialID  string      `json:"credential_id,omitempty"`
	CreatedAt     time.Time   `json:"created_at"`
	UpdatedAt     time.Time   `json:"updated_at"`
	ExpiresAt     time.Time   `json:"expires_at"`
	CompletedAt   *time.Time  `json:"completed_at,omitempty"`
	Viewer        *viewerJSON `json:"viewer,omitempty"`
}

func loginToJSON(l store.Login) loginJSON {
	return loginJSON{ID: l.ID, User: l.UserID, Provider: l.Provider, State: string(l.State), FailureReason: l.FailureReason,
		BrowserVM: l.BrowserVMID, CredentialID: l.CredentialID, CreatedAt: l.CreatedAt.UTC(), UpdatedAt: l.UpdatedAt.UTC(),
		ExpiresAt: l.ExpiresAt.UTC(), CompletedAt: optTime(l.CompletedAt)}
}

// withViewer adds a fresh viewer link to a login the user has to act on:
// bound to the login (its session) and no longer-lived than it. The
// answer then carries a token and must not be cached.
func (s *Server) withViewer(w http.ResponseWriter, r *http.Request, l store.Login) loginJSON {
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
	j.Viewer = &link
	return j
}

type createLoginRequest struct {
	User     string `json:"user"`
	Provider string `json:"provider"`
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

func (s *Server) createLogin(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	var req createLoginRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Provider == "" {
		s.fail(w, r, errdefs.Invalidf("provider is required"))
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
func (s *Server) lookupLogin(w http.ResponseWriter, r *http.Request) (store.Login, bool) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return store.Login{}, false
	}
	id := r.PathValue("id")
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

func (s *Server) getLogin(w http.ResponseWriter, r *http.Request) {
	if l, ok := s.lookupLogin(w, r); ok {
		writeJSON(w, http.StatusOK, s.withViewer(w, r, l))
	}
}

func (s *Server) listLogins(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	f := store.LoginFilter{Provider: r.URL.Query().Get("provider"), ActiveOnly: r.URL.Query().Get("active") == "true"}
	if id := identity(r); !id.Admin() {
		f.UserID = id.UserID
	} else {
		f.UserID = r.URL.Query().Get("user")
	}
	ls, err := s.Logins.List(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]loginJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, loginToJSON(l))
	}
	writeJSON(w, http.StatusOK, map[string]any{"logins": out})
}

func (s *Server) cancelLogin(w http.ResponseWriter, r *http.Request) {
	l, ok := s.lookupLogin(w, r)
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
func (s *Server) loginEvents(w http.ResponseWriter, r *http.Request) {
	l, ok := s.lookupLogin(w, r)
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

type credentialJSON struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Provider  string     `json:"provider"`
	Login     string     `json:"login,omitempty"`
	Valid     bool       `json:"valid"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// listCredentials answers with credential metadata only: no route returns
// a credential's content.
func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request) {
	if s.Logins == nil {
		s.fail(w, r, errLoginsOff)
		return
	}
	user := r.URL.Query().Get("user")
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
	out := make([]credentialJSON, 0, len(cs))
	for _, c := range cs {
		out = append(out, credentialJSON{ID: c.ID, User: c.UserID, Provider: c.Provider, Login: c.LoginID, Valid: c.Valid,
			CreatedAt: c.CreatedAt.UTC(), UpdatedAt: c.UpdatedAt.UTC(), ExpiresAt: optTime(c.ExpiresAt)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"credentials": out})
}
