// Package auth issues and checks API keys. A key is "hearth_<id>_<secret>":
// the id finds the record, and only the SHA-256 of the high-entropy secret is
// stored, compared in constant time.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// ErrUnauthenticated means the key is missing, malformed, unknown, wrong,
// revoked or expired. A caller that does not hold the key's secret never
// learns which.
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrRevoked and ErrExpired (both ErrUnauthenticated) say why a key whose
// secret is right no longer authenticates.
var (
	ErrRevoked = fmt.Errorf("API key revoked: %w", ErrUnauthenticated)
	ErrExpired = fmt.Errorf("API key expired: %w", ErrUnauthenticated)
)

const prefix = "hearth_"

var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

// Identity is who a request acts as.
type Identity struct {
	KeyID  string
	Scope  store.Scope
	UserID string
}

// Admin reports whether the identity may act on every user's resources.
func (i Identity) Admin() bool { return i.Scope == store.ScopeAdmin }

// CanSee reports whether the identity may see a resource owned by userID.
func (i Identity) CanSee(userID string) bool { return i.Admin() || i.UserID == userID }

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity set by WithIdentity.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// NewKey makes a key and the record to store. The key itself is shown once
// and never stored.
func NewKey(name string, scope store.Scope, userID string, now time.Time) (string, store.APIKey, error) {
	if scope != store.ScopeAdmin && scope != store.ScopeUser {
		return "", store.APIKey{}, fmt.Errorf("unknown scope %q", scope)
	}
	if scope == store.ScopeUser && userID == "" {
		return "", store.APIKey{}, errors.New("a user key needs a user")
	}
	idb := make([]byte, 10)
	secret := make([]byte, 32)
	if _, err := rand.Read(idb); err != nil {
		return "", store.APIKey{}, fmt.Errorf("generate key id: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return "", store.APIKey{}, fmt.Errorf("generate key secret: %w", err)
	}
	id := strings.ToLower(enc.EncodeToString(idb))
	sec := strings.ToLower(enc.EncodeToString(secret))
	sum := sha256.Sum256([]byte(sec))
	rec := store.APIKey{ID: id, Name: name, Scope: scope, UserID: userID, SecretHash: sum[:], CreatedAt: now}
	return prefix + id + "_" + sec, rec, nil
}

// parse splits a key into id and secret.
func parse(key string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != 16 || len(secret) != 52 {
		return "", "", false
	}
	return id, secret, true
}

// Verify returns the identity of key, or an error wrapping
// ErrUnauthenticated (ErrRevoked or ErrExpired once the secret is proven
// right). Revocation and expiry hold from the next request on: every
// request reads the key's record. The use is recorded without waiting
// (see Verifier).
func (v *Verifier) Verify(ctx context.Context, key string) (Identity, error) {
	id, secret, ok := parse(key)
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	rec, err := v.Keys.GetAPIKey(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrUnauthenticated
	}
	if err != nil {
		return Identity{}, fmt.Errorf("look up api key: %w", err)
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], rec.SecretHash) != 1 {
		return Identity{}, ErrUnauthenticated
	}
	now := v.now()
	if err := usable(rec, now); err != nil {
		return Identity{}, err
	}
	v.recordUse(rec.ID, now)
	return Identity{KeyID: rec.ID, Scope: rec.Scope, UserID: rec.UserID}, nil
}

// Check reports whether the key keyID, verified earlier, still
// authenticates, as a long request that outlives its start needs to
// know: nil, or an error wrapping ErrUnauthenticated (ErrRevoked,
// ErrExpired, or the bare error for a key that is gone). A store that
// cannot answer is another error.
func (v *Verifier) Check(ctx context.Context, keyID string) error {
	rec, err := v.Keys.GetAPIKey(ctx, keyID)
	if errors.Is(err, store.ErrNotFound) {
		return ErrUnauthenticated
	}
	if err != nil {
		return fmt.Errorf("look up api key: %w", err)
	}
	return usable(rec, v.now())
}

// usable says why a key's record no longer authenticates, or nil.
func usable(rec store.APIKey, now time.Time) error {
	switch {
	case rec.Revoked():
		return ErrRevoked
	case rec.Expired(now):
		return ErrExpired
	}
	return nil
}

// BearerToken extracts the token of an "Authorization: Bearer" header.
func BearerToken(header string) (string, bool) {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
