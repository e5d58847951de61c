package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
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
	return db.QueryEvents(ctx, store.EventFilter{}, afterID, limit)
}

// QueryEvents returns at most limit events f matches with ID > afterID,
// oldest first. A limit <= 0 means 1000. The filter is in the query, which
// walks an index per filter (events_user_id, events_login_id,
// events_vm_id) from afterID on, so other users' rows are never read.
func (db *DB) QueryEvents(ctx context.Context, f store.EventFilter, afterID int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = defaultEventLimit
	}
	query, args := eventQuery(f, afterID, limit)
	rows, err := db.sql.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	events, err := collect(rows, scanEvent)
	if err != nil {
		return nil, fmt.Errorf("list events after %d: %w", afterID, err)
	}
	return events, nil
}

// eventQuery is the SELECT for QueryEvents. The partial indexes on login_id
// and vm_id leave out empty ids; repeating their condition (not empty) in
// the query lets the planner use them.
func eventQuery(f store.EventFilter, afterID int64, limit int) (string, []any) {
	where, args := []string{"id > ?"}, []any{afterID}
	if f.UserID != "" {
		where, args = append(where, "user_id = ?"), append(args, f.UserID)
	}
	if f.LoginID != "" {
		where, args = append(where, "login_id = ?", "login_id <> ''"), append(args, f.LoginID)
	}
	if f.VMID != "" {
		where, args = append(where, "vm_id = ?", "vm_id <> ''"), append(args, f.VMID)
	}
	return `SELECT ` + eventColumns + ` FROM events WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`,
		append(args, limit)
}

// EventHorizon returns the highest event id retention has forgotten.
func (db *DB) EventHorizon(ctx context.Context) (int64, error) {
	h, err := eventHorizon(ctx, db.sql)
	if err != nil {
		return 0, fmt.Errorf("event horizon: %w", err)
	}
	return h, nil
}

func eventHorizon(ctx context.Context, q querier) (int64, error) {
	var h int64
	err := q.QueryRowContext(ctx, `SELECT horizon FROM event_horizon`).Scan(&h)
	return h, err
}

// PruneEvents forgets at most r.Batch of the oldest events that r says are
// too old, in one write transaction: it moves the horizon to the last of
// them, then deletes them (the schema refuses to delete anything above the
// horizon). It stops at the first event r keeps, so the log stays whole
// above the horizon even if events' times are not in id order.
func (db *DB) PruneEvents(ctx context.Context, r store.EventRetention) (int, error) {
	if r.Batch <= 0 {
		return 0, fmt.Errorf("prune events: batch must be positive, got %d: %w", r.Batch, errdefs.ErrInvalid)
	}
	if r.Before.IsZero() && r.KeepRows <= 0 {
		return 0, nil
	}
	var n int
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		horizon, err := eventHorizon(ctx, tx)
		if err != nil {
			return err
		}
		// Ids have no gaps but those retention leaves, so everything at
		// or below newest-KeepRows is beyond the newest KeepRows.
		rowCut := int64(-1)
		if r.KeepRows > 0 {
			var newest int64
			err := tx.QueryRowContext(ctx,
				`SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)`).Scan(&newest)
			if err != nil {
				return err
			}
			rowCut = newest - int64(r.KeepRows)
		}
		rows, err := tx.QueryContext(ctx, `SELECT id, at FROM events WHERE id > ? ORDER BY id LIMIT ?`, horizon, r.Batch)
		if err != nil {
			return err
		}
		last := horizon
		for rows.Next() {
			var (
				id int64
				at time.Time
			)
			if err := rows.Scan(&id, scanTime(&at)); err != nil {
				rows.Close()
				return err
			}
			if id > rowCut && (r.Before.IsZero() || !at.Before(r.Before)) {
				break
			}
			last = id
			n++
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		if last == horizon {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE event_horizon SET horizon = ?`, last); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM events WHERE id > ? AND id <= ?`, horizon, last)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return n, nil
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
