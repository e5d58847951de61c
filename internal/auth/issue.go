package auth

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// KeyStore is what issuing a key needs.
type KeyStore interface {
	store.Users
	store.APIKeys
}

// IssueRequest describes a key to make.
type IssueRequest struct {
	Name   string
	Admin  bool
	UserID string    // required for a user key; optional for an admin key
	Expiry time.Time // zero: the key never expires
}

const (
	maxNameLen = 128
	// MaxLifetime is how far ahead a key's expiry may be set. A key that
	// should live longer is made without one.
	MaxLifetime = 10 * 365 * 24 * time.Hour
)

// Issue makes a key as req says, creating its user if the user is new,
// and stores its record. The key itself is returned once and never
// stored. Bad requests are errdefs.ErrInvalid with a message that says
// what was wrong.
func Issue(ctx context.Context, st KeyStore, req IssueRequest, now time.Time) (string, store.APIKey, error) {
	if err := req.validate(now); err != nil {
		return "", store.APIKey{}, err
	}
	scope := store.ScopeUser
	if req.Admin {
		scope = store.ScopeAdmin
	}
	now = now.UTC()
	if req.UserID != "" {
		err := st.CreateUser(ctx, store.User{ID: req.UserID, Name: req.UserID, CreatedAt: now})
		if err != nil && !errors.Is(err, store.ErrConflict) { // conflict: the user exists
			return "", store.APIKey{}, fmt.Errorf("create user %s: %w", req.UserID, err)
		}
	}
	key, rec, err := NewKey(req.Name, scope, req.UserID, now)
	if err != nil {
		return "", store.APIKey{}, err
	}
	if !req.Expiry.IsZero() {
		rec.ExpiresAt = req.Expiry.UTC()
	}
	if err := st.CreateAPIKey(ctx, rec); err != nil {
		return "", store.APIKey{}, fmt.Errorf("store api key: %w", err)
	}
	return key, rec, nil
}

func (r IssueRequest) validate(now time.Time) error {
	switch {
	case !r.Admin && r.UserID == "":
		return errdefs.Invalidf("a user key needs a user (or make an admin key)")
	case len(r.Name) > maxNameLen:
		return errdefs.Invalidf("name is %d bytes, at most %d", len(r.Name), maxNameLen)
	case !printable(r.Name, true):
		return errdefs.Invalidf("name %q holds control characters", r.Name)
	case len(r.UserID) > maxNameLen:
		return errdefs.Invalidf("user is %d bytes, at most %d", len(r.UserID), maxNameLen)
	case !printable(r.UserID, false):
		return errdefs.Invalidf("user %q must be printable, without spaces", r.UserID)
	case r.Expiry.IsZero():
		return nil
	case !r.Expiry.After(now):
		return errdefs.Invalidf("expiry %s is not in the future", r.Expiry.UTC().Format(time.RFC3339))
	case r.Expiry.Sub(now) > MaxLifetime:
		return errdefs.Invalidf("expiry %s is more than 10 years ahead; make a key without an expiry instead", r.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// printable reports whether s is valid text without control characters
// (and without spaces unless spaces is set).
func printable(s string, spaces bool) bool {
	for _, r := range s {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) && !(spaces && r == ' ') || !spaces && unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
