package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// apiKeyJSON is what the API shows of a key: never its secret or hash.
type apiKeyJSON struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	User       string     `json:"user,omitempty"`
	Admin      bool       `json:"admin"`
	Status     string     `json:"status"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

func apiKeyToJSON(k store.APIKey, now time.Time) apiKeyJSON {
	status := "active"
	switch {
	case k.Revoked():
		status = "revoked"
	case k.Expired(now):
		status = "expired"
	}
	return apiKeyJSON{ID: k.ID, Name: k.Name, User: k.UserID, Admin: k.Scope == store.ScopeAdmin, Status: status,
		CreatedAt: k.CreatedAt.UTC(), ExpiresAt: optTime(k.ExpiresAt), LastUsedAt: optTime(k.LastUsedAt), RevokedAt: optTime(k.RevokedAt)}
}

type createAPIKeyRequest struct {
	Name       string `json:"name"`
	User       string `json:"user"`
	Admin      bool   `json:"admin"`
	ExpiresAt  string `json:"expires_at"`
	TTLSeconds *int64 `json:"ttl_seconds"`
}

// createdAPIKeyJSON is the answer to a creation: the key, shown this once,
// and its record.
type createdAPIKeyJSON struct {
	Key    string     `json:"key"`
	APIKey apiKeyJSON `json:"api_key"`
}

func (s *Server) now() time.Time {
	if s.Verifier != nil && s.Verifier.Now != nil {
		return s.Verifier.Now()
	}
	return time.Now()
}

// listAPIKeys: an admin key sees every key (or one user's); a user key
// sees its own user's user keys.
func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request) {
	f := store.APIKeyFilter{UserID: r.URL.Query().Get("user")}
	if id := identity(r); !id.Admin() {
		if f.UserID != "" && f.UserID != id.UserID {
			s.fail(w, r, errdefs.NotFoundf("user %s not found", f.UserID))
			return
		}
		f = store.APIKeyFilter{UserID: id.UserID, Scope: store.ScopeUser}
	}
	keys, err := s.Store.ListAPIKeys(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now()
	out := make([]apiKeyJSON, 0, len(keys))
	for _, k := range keys {
		out = append(out, apiKeyToJSON(k, now))
	}
	writeJSON(w, http.StatusOK, map[string]any{"api_keys": out})
}

// createAPIKey makes a key; only admin keys may (a user key that could
// mint keys would outlive its own revocation).
func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request) {
	if !identity(r).Admin() {
		s.fail(w, r, errdefs.Forbiddenf("only admin keys create API keys"))
		return
	}
	var req createAPIKeyRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now()
	ir := auth.IssueRequest{Name: req.Name, Admin: req.Admin, UserID: req.User}
	switch {
	case req.ExpiresAt != "" && req.TTLSeconds != nil:
		s.fail(w, r, errdefs.Invalidf("give expires_at or ttl_seconds, not both"))
		return
	case req.ExpiresAt != "":
		t, err := time.Parse(time.RFC3339Nano, req.ExpiresAt)
		if err != nil {
			s.fail(w, r, errdefs.Invalidf("expires_at must be an RFC 3339 time such as 2030-01-02T15:04:05Z, got %q", req.ExpiresAt))
			return
		}
		ir.Expiry = t
	case req.TTLSeconds != nil:
		ttl := *req.TTLSeconds
		if ttl < 1 || ttl > int64(auth.MaxLifetime/time.Second) {
			s.fail(w, r, errdefs.Invalidf("ttl_seconds must be between 1 and %d (10 years), got %d", int64(auth.MaxLifetime/time.Second), ttl))
			return
		}
		ir.Expiry = now.Add(time.Duration(ttl) * time.Second)
	}
	key, rec, err := auth.Issue(r.Context(), s.Store, ir, now)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store") // the answer holds a credential
	writeJSON(w, http.StatusCreated, createdAPIKeyJSON{Key: key, APIKey: apiKeyToJSON(rec, now)})
}

// revokeAPIKey revokes a key. A user key may revoke its own user's user
// keys (itself included); revoking only takes access away. The last active
// admin key is kept unless force=true.
func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request) {
	keyID := r.PathValue("id")
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(w, r, errdefs.Invalidf("force must be true or false, got %q", v))
			return
		}
		force = b
	}
	notFound := errdefs.NotFoundf("API key %s not found", keyID)
	k, err := s.Store.GetAPIKey(r.Context(), keyID)
	if errors.Is(err, store.ErrNotFound) {
		err = notFound
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if id := identity(r); !id.Admin() && (k.Scope != store.ScopeUser || k.UserID != id.UserID) {
		s.fail(w, r, notFound)
		return
	}
	now := s.now()
	k, err = s.Store.RevokeAPIKey(r.Context(), keyID, now.UTC(), store.RevokeOptions{AllowLastAdmin: force})
	switch {
	case errors.Is(err, store.ErrLastAdminKey):
		err = errdefs.Conflictf("API key %s is the last active admin key: without it no key can manage keys or other users' VMs; "+
			"revoke it with force=true if you mean it (root can make a new one on the host with 'hearth apikey create --admin')", keyID)
	case errors.Is(err, store.ErrNotFound):
		err = notFound
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, apiKeyToJSON(k, now))
}
