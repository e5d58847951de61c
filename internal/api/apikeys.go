package api

import (
	"errors"
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// apiKeyJSON is what the API shows of a key: never its secret or hash.
func apiKeyToJSON(k store.APIKey, now time.Time) v1.APIKey {
	status := v1.APIKeyStatusActive
	switch {
	case k.Revoked():
		status = v1.APIKeyStatusRevoked
	case k.Expired(now):
		status = v1.APIKeyStatusExpired
	}
	return v1.APIKey{ID: k.ID, Name: k.Name, User: k.UserID, Admin: k.Scope == store.ScopeAdmin, Status: status,
		CreatedAt: k.CreatedAt.UTC(), ExpiresAt: utc(k.ExpiresAt), LastUsedAt: utc(k.LastUsedAt), RevokedAt: utc(k.RevokedAt)}
}

// now is the Verifier's clock, which key expiry is checked against.
func (s *Server) now() time.Time {
	if s.Verifier != nil && s.Verifier.Now != nil {
		return s.Verifier.Now()
	}
	return time.Now()
}

// listAPIKeys: an admin key sees every key (or one user's); a user key
// sees its own user's user keys.
// ListAPIKeys lists the keys the caller may see.
func (s *Server) ListAPIKeys(w http.ResponseWriter, r *http.Request, params v1.ListAPIKeysParams) {
	f := store.APIKeyFilter{UserID: value(params.User)}
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
	out := v1.APIKeyList{APIKeys: make([]v1.APIKey, 0, len(keys))}
	for _, k := range keys {
		out.APIKeys = append(out.APIKeys, apiKeyToJSON(k, now))
	}
	writeJSON(w, http.StatusOK, out)
}

// CreateAPIKey makes a key; only admin keys may (x-hearth-admin: a user
// key that could mint keys would outlive its own revocation).
func (s *Server) CreateAPIKey(w http.ResponseWriter, r *http.Request) {
	var req v1.CreateAPIKey
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.now()
	ir := auth.IssueRequest{Name: req.Name, Admin: req.Admin, UserID: req.User}
	// The document bounds ttl_seconds and checks expires_at's format.
	switch {
	case !req.ExpiresAt.IsZero() && req.TTLSeconds != 0:
		s.fail(w, r, errdefs.Invalidf("give expires_at or ttl_seconds, not both"))
		return
	case !req.ExpiresAt.IsZero():
		ir.Expiry = req.ExpiresAt
	case req.TTLSeconds != 0:
		ir.Expiry = now.Add(time.Duration(req.TTLSeconds) * time.Second)
	}
	key, rec, err := auth.Issue(r.Context(), s.Store, ir, now)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store") // the answer holds a credential
	writeJSON(w, http.StatusCreated, v1.CreatedAPIKey{Key: key, APIKey: apiKeyToJSON(rec, now)})
}

// revokeAPIKey revokes a key. A user key may revoke its own user's user
// keys (itself included); revoking only takes access away. The last active
// admin key is kept unless force=true.
// RevokeAPIKey revokes a key; the last admin key only with force.
func (s *Server) RevokeAPIKey(w http.ResponseWriter, r *http.Request, keyID string, params v1.RevokeAPIKeyParams) {
	force := value(params.Force)
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
