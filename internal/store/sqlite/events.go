package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/hearth-project/hearth/internal/store"
)

// defaultEventLimit is how many events ListEvents returns when limit <= 0.
const defaultEventLimit = 1000

const eventColumns = `id, at, type, vm_id, user_id, login_id, from_state, to_state, message`

// AppendEvent appends e to the log and returns it with the ID the store
// assigned (any ID set by the caller is ignored). IDs strictly increase.
func (db *DB) AppendEvent(ctx context.Context, e store.Event) (store.Event, error) {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		id, err := insertEvent(ctx, tx, e)
		e.ID = id
		return err
	})
	if err != nil {
		return store.Event{}, fmt.Errorf("append event %s: %w", e.Type, err)
	}
	return e, nil
}

// insertEvent inserts e (ignoring e.ID) and returns its new ID.
func insertEvent(ctx context.Context, q querier, e store.Event) (int64, error) {
	res, err := q.ExecContext(ctx,
		`INSERT INTO events (at, type, vm_id, user_id, login_id, from_state, to_state, message)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		timeArg(e.At), e.Type, e.VMID, e.UserID, e.LoginID, string(e.FromState), string(e.ToState), e.Message)
	if err != nil {
		return 0, fmt.Errorf("insert event: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("insert event: %w", err)
	}
	return id, nil
}

// ListEvents returns at most limit events with ID > afterID, oldest first.
// A limit <= 0 means 1000.
func (db *DB) ListEvents(ctx context.Context, afterID int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = defaultEventLimit
	}
	rows, err := db.sql.QueryContext(ctx,
		`SELECT `+eventColumns+` FROM events WHERE id > ? ORDER BY id LIMIT ?`, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	events, err := collect(rows, scanEvent)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	return events, nil
}

func scanEvent(r rowScanner) (store.Event, error) {
	var (
		e        store.Event
		from, to string
	)
	err := r.Scan(&e.ID, scanTime(&e.At), &e.Type, &e.VMID, &e.UserID, &e.LoginID, &from, &to, &e.Message)
	if err != nil {
		return store.Event{}, noRows(err)
	}
	e.FromState, e.ToState = store.State(from), store.State(to)
	return e, nil
}
