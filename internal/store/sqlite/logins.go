package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// Types of the events the login methods append.
const (
	eventLoginCreated = store.EventLoginCreated
	eventLoginState   = "login.state"
)

// loginColumns lists the logins columns in the order of loginArgs and
// scanLogin; id first.
var loginColumns = []string{
	"id", "user_id", "provider", "state", "failure_reason", "browser_vm_id",
	"credential_id", "created_at", "updated_at", "expires_at", "completed_at",
}

var (
	selectLogin = `SELECT ` + strings.Join(loginColumns, ", ") + ` FROM logins`
	insertLogin = `INSERT INTO logins (` + strings.Join(loginColumns, ", ") + `) VALUES (` +
		placeholders(len(loginColumns)) + `) ON CONFLICT DO NOTHING`
	updateLogin = `UPDATE logins SET ` + strings.Join(loginColumns[1:], " = ?, ") + ` = ? WHERE id = ?`
)

// allLoginStates are the valid login states; activeLoginStates the
// non-terminal ones (the partial unique index in 0004 names the same).
var (
	allLoginStates = []store.LoginState{
		store.LoginStarting, store.LoginAwaitingUser, store.LoginCapturing,
		store.LoginCompleted, store.LoginFailed, store.LoginCancelled, store.LoginExpired,
	}
	activeLoginStates = []store.LoginState{store.LoginStarting, store.LoginAwaitingUser, store.LoginCapturing}
)

func loginArgs(l store.Login) []any {
	return []any{
		l.ID, l.UserID, l.Provider, string(l.State), l.FailureReason, l.BrowserVMID,
		l.CredentialID, timeArg(l.CreatedAt), timeArg(l.UpdatedAt), timeArg(l.ExpiresAt),
		timeArg(l.CompletedAt),
	}
}

func scanLogin(r rowScanner) (store.Login, error) {
	var (
		l     store.Login
		state string
	)
	err := r.Scan(&l.ID, &l.UserID, &l.Provider, &state, &l.FailureReason, &l.BrowserVMID,
		&l.CredentialID, scanTime(&l.CreatedAt), scanTime(&l.UpdatedAt), scanTime(&l.ExpiresAt),
		scanTime(&l.CompletedAt))
	if err != nil {
		return store.Login{}, noRows(err)
	}
	l.State = store.LoginState(state)
	return l, nil
}

// activeStateArgs returns the active states as query arguments.
func activeStateArgs() []any {
	args := make([]any, 0, len(activeLoginStates))
	for _, s := range activeLoginStates {
		args = append(args, string(s))
	}
	return args
}

// validateLogin checks what every stored login must satisfy.
func validateLogin(l store.Login) error {
	switch {
	case l.ID == "" || l.UserID == "" || l.Provider == "":
		return fmt.Errorf("a login needs an id, a user and a provider: %w", errdefs.ErrInvalid)
	case !slices.Contains(allLoginStates, l.State):
		return fmt.Errorf("unknown login state %q: %w", l.State, errdefs.ErrInvalid)
	case l.State == store.LoginCompleted && l.CredentialID == "":
		return fmt.Errorf("a completed login must name its credential: %w", errdefs.ErrInvalid)
	}
	return nil
}

// CreateLogin inserts l and appends a "login.created" event (ToState the
// login's state, Message its provider) in the same transaction. l must be
// valid and in a non-terminal state with no CompletedAt (errdefs.ErrInvalid
// otherwise). It fails with store.ErrConflict if l.ID exists or the user
// already has an active login for the provider; the partial unique index
// logins_one_active enforces the latter even against other processes.
func (db *DB) CreateLogin(ctx context.Context, l store.Login) (store.Event, error) {
	err := validateLogin(l)
	switch {
	case err != nil:
	case l.State.Terminal():
		err = fmt.Errorf("a new login cannot be %s: %w", l.State, errdefs.ErrInvalid)
	case !l.CompletedAt.IsZero():
		err = fmt.Errorf("a new login cannot have completed: %w", errdefs.ErrInvalid)
	}
	if err != nil {
		return store.Event{}, fmt.Errorf("create login %s: %w", l.ID, err)
	}
	var ev store.Event
	err = db.writeTx(ctx, func(tx *sql.Tx) error {
		// The index below is what guarantees uniqueness; this lookup only
		// lets the error name the login in the way.
		var active string
		err := tx.QueryRowContext(ctx,
			`SELECT id FROM logins WHERE user_id = ? AND provider = ? AND state IN (`+placeholders(len(activeLoginStates))+`)`,
			append([]any{l.UserID, l.Provider}, activeStateArgs()...)...).Scan(&active)
		switch {
		case err == nil:
			return fmt.Errorf("user %s already has an active %s login (%s): %w", l.UserID, l.Provider, active, store.ErrConflict)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		res, err := tx.ExecContext(ctx, insertLogin, loginArgs(l)...)
		if err != nil {
			return uniqueConflict(err)
		}
		if err := requireRow(res, store.ErrConflict); err != nil {
			return err
		}
		ev = store.Event{
			At:      db.now(),
			Type:    eventLoginCreated,
			UserID:  l.UserID,
			LoginID: l.ID,
			ToState: store.State(l.State),
			Message: l.Provider,
		}
		ev.ID, err = insertEvent(ctx, tx, ev)
		return err
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("create login %s: %w", l.ID, err)
	}
	return ev, nil
}

// GetLogin returns the login with id, or store.ErrNotFound.
func (db *DB) GetLogin(ctx context.Context, id string) (store.Login, error) {
	l, err := getLogin(ctx, db.sql, id)
	if err != nil {
		return store.Login{}, fmt.Errorf("get login %s: %w", id, err)
	}
	return l, nil
}

func getLogin(ctx context.Context, q querier, id string) (store.Login, error) {
	return scanLogin(q.QueryRowContext(ctx, selectLogin+` WHERE id = ?`, id))
}

// ListLogins returns the logins matching f, oldest first (by CreatedAt, then
// ID).
func (db *DB) ListLogins(ctx context.Context, f store.LoginFilter) ([]store.Login, error) {
	var (
		conds []string
		args  []any
	)
	if f.UserID != "" {
		conds = append(conds, "user_id = ?")
		args = append(args, f.UserID)
	}
	if f.Provider != "" {
		conds = append(conds, "provider = ?")
		args = append(args, f.Provider)
	}
	if f.ActiveOnly {
		conds = append(conds, "state IN ("+placeholders(len(activeLoginStates))+")")
		args = append(args, activeStateArgs()...)
	}
	where := ""
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	rows, err := db.sql.QueryContext(ctx, selectLogin+where+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list logins: %w", err)
	}
	logins, err := collect(rows, scanLogin)
	if err != nil {
		return nil, fmt.Errorf("list logins: %w", err)
	}
	return logins, nil
}

// UpdateLogin reads the login with id, applies fn to it and writes it back,
// all in one write transaction. UpdatedAt is set to the current time, and
// CompletedAt too when State becomes terminal (the store keeps CompletedAt:
// fn's changes to it are ignored). If fn changed State, a "login.state"
// event (FromState and ToState the login states, Message msg) is appended in
// the same transaction and returned.
//
// Nothing is written and an error is returned if fn fails (its error,
// unchanged), if the login is in a terminal state and fn changed State
// (store.ErrConflict), or if fn changed the ID, user, provider or creation
// time or left the login invalid (errdefs.ErrInvalid).
func (db *DB) UpdateLogin(ctx context.Context, id, msg string, fn func(*store.Login) error) (store.Login, *store.Event, error) {
	var (
		l     store.Login
		ev    *store.Event
		fnErr error
	)
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := getLogin(ctx, tx, id)
		if err != nil {
			return err
		}
		l = old
		if fnErr = fn(&l); fnErr != nil {
			return fnErr
		}
		ev, err = db.writeUpdatedLogin(ctx, tx, old, &l, msg)
		return err
	})
	switch {
	case fnErr != nil:
		return store.Login{}, nil, err // fnErr, possibly joined with a rollback failure
	case err != nil:
		return store.Login{}, nil, fmt.Errorf("update login %s: %w", id, err)
	}
	return l, ev, nil
}

// writeUpdatedLogin checks l (fn's result) against old, stamps it, writes it
// and, if the state changed, appends and returns the "login.state" event.
func (db *DB) writeUpdatedLogin(ctx context.Context, tx *sql.Tx, old store.Login, l *store.Login, msg string) (*store.Event, error) {
	if l.ID != old.ID || l.UserID != old.UserID || l.Provider != old.Provider || !l.CreatedAt.Equal(old.CreatedAt) {
		return nil, fmt.Errorf("update must not change the id, user, provider or creation time: %w", errdefs.ErrInvalid)
	}
	changed := l.State != old.State
	if changed && old.State.Terminal() {
		return nil, fmt.Errorf("login is already %s, cannot become %s: %w", old.State, l.State, store.ErrConflict)
	}
	if err := validateLogin(*l); err != nil {
		return nil, err
	}
	now := db.now()
	l.UpdatedAt = now
	l.CompletedAt = old.CompletedAt
	if changed && l.State.Terminal() {
		l.CompletedAt = now
	}
	args := append(loginArgs(*l)[1:], l.ID)
	if _, err := tx.ExecContext(ctx, updateLogin, args...); err != nil {
		return nil, uniqueConflict(err)
	}
	if !changed {
		return nil, nil
	}
	ev := store.Event{
		At:        now,
		Type:      eventLoginState,
		UserID:    l.UserID,
		LoginID:   l.ID,
		FromState: store.State(old.State),
		ToState:   store.State(l.State),
		Message:   msg,
	}
	id, err := insertEvent(ctx, tx, ev)
	if err != nil {
		return nil, err
	}
	ev.ID = id
	return &ev, nil
}

// uniqueConflict turns a violated uniqueness constraint into an error
// wrapping store.ErrConflict and returns other errors unchanged.
func uniqueConflict(err error) error {
	var se *sqlitedrv.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		}
	}
	return err
}
