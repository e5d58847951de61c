package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

const apiKeyColumns = `id, name, scope, user_id, secret_hash, created_at, last_used_at, revoked_at, expires_at`

// CreateAPIKey inserts k. It fails with store.ErrConflict if k.ID exists,
// with store.ErrNotFound if k.UserID names no user, and with
// errdefs.ErrInvalid if the scope is unknown, a user-scoped key has no user,
// the secret hash is empty or the key would expire before it was made.
func (db *DB) CreateAPIKey(ctx context.Context, k store.APIKey) error {
	if err := validateAPIKey(k); err != nil {
		return fmt.Errorf("create api key %s: %w", k.ID, err)
	}
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		if k.UserID != "" {
			if err := userExists(ctx, tx, k.UserID); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx,
			`INSERT INTO api_keys (`+apiKeyColumns+`) VALUES (`+placeholders(9)+`) ON CONFLICT (id) DO NOTHING`,
			k.ID, k.Name, string(k.Scope), stringArg(k.UserID), k.SecretHash,
			timeArg(k.CreatedAt), timeArg(k.LastUsedAt), timeArg(k.RevokedAt), timeArg(k.ExpiresAt))
		if err != nil {
			return err
		}
		return requireRow(res, store.ErrConflict)
	})
	if err != nil {
		return fmt.Errorf("create api key %s: %w", k.ID, err)
	}
	return nil
}

func validateAPIKey(k store.APIKey) error {
	switch {
	case k.Scope != store.ScopeAdmin && k.Scope != store.ScopeUser:
		return fmt.Errorf("unknown scope %q: %w", k.Scope, errdefs.ErrInvalid)
	case k.Scope == store.ScopeUser && k.UserID == "":
		return fmt.Errorf("user-scoped key needs a user id: %w", errdefs.ErrInvalid)
	case len(k.SecretHash) == 0:
		return fmt.Errorf("empty secret hash: %w", errdefs.ErrInvalid)
	case !k.ExpiresAt.IsZero() && !k.CreatedAt.IsZero() && !k.ExpiresAt.After(k.CreatedAt):
		return fmt.Errorf("expires %s, not after its creation %s: %w", k.ExpiresAt, k.CreatedAt, errdefs.ErrInvalid)
	}
	return nil
}

// userExists returns an error wrapping store.ErrNotFound unless user id exists.
func userExists(ctx context.Context, q querier, id string) error {
	var one int
	err := q.QueryRowContext(ctx, `SELECT 1 FROM users WHERE id = ?`, id).Scan(&one)
	if err != nil {
		return fmt.Errorf("user %s: %w", id, noRows(err))
	}
	return nil
}

// GetAPIKey returns the key with id, or store.ErrNotFound.
func (db *DB) GetAPIKey(ctx context.Context, id string) (store.APIKey, error) {
	row := db.sql.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id)
	k, err := scanAPIKey(row)
	if err != nil {
		return store.APIKey{}, fmt.Errorf("get api key %s: %w", id, err)
	}
	return k, nil
}

// ListAPIKeys returns the keys f selects, revoked and expired ones
// included, oldest first.
func (db *DB) ListAPIKeys(ctx context.Context, f store.APIKeyFilter) ([]store.APIKey, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys
		WHERE (? = '' OR user_id = ?) AND (? = '' OR scope = ?)
		ORDER BY created_at, id`, f.UserID, f.UserID, string(f.Scope), string(f.Scope))
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	keys, err := collect(rows, scanAPIKey)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return keys, nil
}

// TouchAPIKey sets the key's LastUsedAt to at.
func (db *DB) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, `UPDATE api_keys SET last_used_at = ? WHERE id = ?`, timeArg(at), id)
	})
	if err != nil {
		return fmt.Errorf("touch api key %s: %w", id, err)
	}
	return nil
}

// RevokeAPIKey marks the key revoked at at and returns it; see
// store.APIKeys for the last-admin guard, checked in the same transaction.
func (db *DB) RevokeAPIKey(ctx context.Context, id string, at time.Time, opt store.RevokeOptions) (store.APIKey, error) {
	var k store.APIKey
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		var err error
		k, err = scanAPIKey(tx.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
		if err != nil || k.Revoked() {
			return err
		}
		if k.Scope == store.ScopeAdmin && k.Active(at) && !opt.AllowLastAdmin {
			var others int
			err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_keys
				WHERE scope = 'admin' AND id <> ? AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`,
				id, timeArg(at)).Scan(&others)
			if err != nil {
				return err
			}
			if others == 0 {
				return store.ErrLastAdminKey
			}
		}
		k.RevokedAt = at.UTC()
		return execOne(ctx, tx, `UPDATE api_keys SET revoked_at = ? WHERE id = ?`, timeArg(at), id)
	})
	if err != nil {
		return store.APIKey{}, fmt.Errorf("revoke api key %s: %w", id, err)
	}
	return k, nil
}

func scanAPIKey(r rowScanner) (store.APIKey, error) {
	var (
		k     store.APIKey
		scope string
	)
	err := r.Scan(&k.ID, &k.Name, &scope, scanString(&k.UserID), &k.SecretHash,
		scanTime(&k.CreatedAt), scanTime(&k.LastUsedAt), scanTime(&k.RevokedAt), scanTime(&k.ExpiresAt))
	if err != nil {
		return store.APIKey{}, noRows(err)
	}
	k.Scope = store.Scope(scope)
	return k, nil
}
