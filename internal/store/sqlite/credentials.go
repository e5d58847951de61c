package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// credentialColumns lists the credentials columns in the order of
// credentialArgs and scanCredential; id first.
var credentialColumns = []string{
	"id", "user_id", "provider", "login_id", "key_id", "wrapped_key", "sealed",
	"created_at", "updated_at", "expires_at", "valid",
}

var selectCredential = `SELECT ` + strings.Join(credentialColumns, ", ") + ` FROM credentials`

// upsertCredential inserts a record, or replaces every field of the record
// with the same id as long as it belongs to the same user and provider (a
// record never moves to another pair: its sealed data is bound to them).
var upsertCredential = `INSERT INTO credentials (` + strings.Join(credentialColumns, ", ") + `) VALUES (` +
	placeholders(len(credentialColumns)) + `)
	ON CONFLICT (id) DO UPDATE SET ` + setExcluded(credentialColumns[3:]) + `
	WHERE user_id = excluded.user_id AND provider = excluded.provider`

// setExcluded renders "col = excluded.col, ..." for an upsert.
func setExcluded(cols []string) string {
	parts := make([]string, 0, len(cols))
	for _, c := range cols {
		parts = append(parts, c+" = excluded."+c)
	}
	return strings.Join(parts, ", ")
}

func credentialArgs(c store.Credential) []any {
	valid := 0
	if c.Valid {
		valid = 1
	}
	return []any{
		c.ID, c.UserID, c.Provider, c.LoginID, c.KeyID, c.WrappedKey, c.Sealed,
		timeArg(c.CreatedAt), timeArg(c.UpdatedAt), timeArg(c.ExpiresAt), valid,
	}
}

func scanCredential(r rowScanner) (store.Credential, error) {
	var (
		c     store.Credential
		valid int64
	)
	err := r.Scan(&c.ID, &c.UserID, &c.Provider, &c.LoginID, &c.KeyID, &c.WrappedKey, &c.Sealed,
		scanTime(&c.CreatedAt), scanTime(&c.UpdatedAt), scanTime(&c.ExpiresAt), &valid)
	if err != nil {
		return store.Credential{}, noRows(err)
	}
	c.Valid = valid != 0
	return c, nil
}

// validateCredential refuses records that are not sealed: the store never
// holds a credential it could not have received from the vault.
func validateCredential(c store.Credential) error {
	switch {
	case c.ID == "" || c.UserID == "" || c.Provider == "":
		return fmt.Errorf("a credential needs an id, a user and a provider: %w", errdefs.ErrInvalid)
	case c.KeyID == "" || len(c.WrappedKey) == 0 || len(c.Sealed) == 0:
		return fmt.Errorf("credential is not sealed (no key id, wrapped key or sealed data): %w", errdefs.ErrInvalid)
	}
	return nil
}

// PutCredential stores c as the user's only record for c.Provider: any other
// record of that user and provider is removed in the same transaction, and a
// record with c.ID is replaced. It fails with errdefs.ErrInvalid if c lacks
// an id, user, provider or its sealed fields, and with store.ErrConflict if
// c.ID is the id of another user's or provider's record.
func (db *DB) PutCredential(ctx context.Context, c store.Credential) error {
	if err := validateCredential(c); err != nil {
		return fmt.Errorf("put credential %s: %w", c.ID, err)
	}
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`DELETE FROM credentials WHERE user_id = ? AND provider = ? AND id <> ?`, c.UserID, c.Provider, c.ID)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, upsertCredential, credentialArgs(c)...)
		if err != nil {
			return uniqueConflict(err)
		}
		// No row written: the id is taken by another pair's record.
		return requireRow(res, fmt.Errorf("id belongs to another user's or provider's credential: %w", store.ErrConflict))
	})
	if err != nil {
		return fmt.Errorf("put credential %s: %w", c.ID, err)
	}
	return nil
}

// GetCredential returns the user's record for provider, or
// store.ErrNotFound.
func (db *DB) GetCredential(ctx context.Context, userID, provider string) (store.Credential, error) {
	c, err := scanCredential(db.sql.QueryRowContext(ctx,
		selectCredential+` WHERE user_id = ? AND provider = ?`, userID, provider))
	if err != nil {
		return store.Credential{}, fmt.Errorf("get %s credential of %s: %w", provider, userID, err)
	}
	return c, nil
}

// ListCredentials returns userID's records ("" for everyone's), ordered by
// user, then provider.
func (db *DB) ListCredentials(ctx context.Context, userID string) ([]store.Credential, error) {
	query, args := selectCredential, []any(nil)
	if userID != "" {
		query += ` WHERE user_id = ?`
		args = append(args, userID)
	}
	rows, err := db.sql.QueryContext(ctx, query+` ORDER BY user_id, provider`, args...)
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	cs, err := collect(rows, scanCredential)
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	return cs, nil
}

// RewrapCredential sets the KeyID and WrappedKey of the record with id to
// newKeyID and wrapped if its KeyID is oldKeyID. It fails with
// store.ErrNotFound if there is no such record and with store.ErrConflict if
// its KeyID is no longer oldKeyID; nothing is written then. UpdatedAt is
// left alone: the credential itself did not change.
func (db *DB) RewrapCredential(ctx context.Context, id, oldKeyID, newKeyID string, wrapped []byte) error {
	if newKeyID == "" || len(wrapped) == 0 {
		return fmt.Errorf("rewrap credential %s: empty key id or wrapped key: %w", id, errdefs.ErrInvalid)
	}
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		var current string
		if err := tx.QueryRowContext(ctx, `SELECT key_id FROM credentials WHERE id = ?`, id).Scan(&current); err != nil {
			return noRows(err)
		}
		if current != oldKeyID {
			return fmt.Errorf("wrapped under key %s, not %s: %w", current, oldKeyID, store.ErrConflict)
		}
		return execOne(ctx, tx, `UPDATE credentials SET key_id = ?, wrapped_key = ? WHERE id = ? AND key_id = ?`,
			newKeyID, wrapped, id, oldKeyID)
	})
	if err != nil {
		return fmt.Errorf("rewrap credential %s: %w", id, err)
	}
	return nil
}

// DeleteCredential removes the user's record for provider, or returns
// store.ErrNotFound.
func (db *DB) DeleteCredential(ctx context.Context, userID, provider string) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, `DELETE FROM credentials WHERE user_id = ? AND provider = ?`, userID, provider)
	})
	if err != nil {
		return fmt.Errorf("delete %s credential of %s: %w", provider, userID, err)
	}
	return nil
}
