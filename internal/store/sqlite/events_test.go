package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// fillEvents appends n events in one statement, spread over users users
// ("u-0"...), VMs "vm-0".."vm-999" and no login, as a long-running daemon
// leaves them. Every few thousandth is one of login "lgn-target"'s (of
// user u-0), so a stream of that login has to find 5 rows among n.
func fillEvents(tb testing.TB, db *DB, n, users int) (loginEvents int) {
	tb.Helper()
	ctx := context.Background()
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?)
			INSERT INTO events (at, type, vm_id, user_id, login_id, from_state, to_state, message)
			SELECT ?, 'vm.state', 'vm-' || (i % 1000), 'u-' || (i % ?), '', 'booting', 'ready', 'event ' || i FROM seq`,
			n, timeArg(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)), users)
		return err
	})
	if err != nil {
		tb.Fatalf("fill %d events: %v", n, err)
	}
	// The login's events come after most of the others, as a login of a
	// user of an old installation would.
	for i := range 5 {
		if _, err := db.AppendEvent(ctx, store.Event{At: time.Now(), Type: "login.state", UserID: "u-0",
			LoginID: "lgn-target", ToState: "awaiting_user", Message: fmt.Sprint(i)}); err != nil {
			tb.Fatal(err)
		}
		err := db.writeTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `
				WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < 100)
				INSERT INTO events (at, type, vm_id, user_id, login_id, from_state, to_state, message)
				SELECT NULL, 'vm.state', 'vm-x', 'u-1', '', 'booting', 'ready', '' FROM seq`)
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return 5
}

// largeLog is how many events the large-log tests write: 200k, or 5k
// under the race detector (which makes writing them take minutes).
func largeLog() int {
	if raceEnabled {
		return 5_000
	}
	return 200_000
}

// TestEventQueriesSearchIndexes shows that the query itself filters: on a
// large log every filtered query is an index search from the resume point
// (SQLite's plan says SEARCH ... USING INDEX, never SCAN), and one login's
// events come back at once.
func TestEventQueriesSearchIndexes(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	start := time.Now()
	size := largeLog()
	fillEvents(t, db, size, 100)
	t.Logf("%d events written in %s", size, time.Since(start).Round(time.Millisecond))

	for _, tc := range []struct {
		f     store.EventFilter
		index string
	}{
		{store.EventFilter{UserID: "u-7"}, "events_user_id"},
		{store.EventFilter{LoginID: "lgn-target"}, "events_login_id"},
		{store.EventFilter{LoginID: "lgn-target", UserID: "u-0"}, "events_"},
		{store.EventFilter{VMID: "vm-7"}, "events_vm_id"},
	} {
		query, args := eventQuery(tc.f, 0, 500)
		plan := queryPlan(t, db, query, args...)
		if !strings.Contains(plan, "SEARCH events USING INDEX "+tc.index) || strings.Contains(plan, "SCAN") {
			t.Errorf("%+v: plan %q, want an index search (%s)", tc.f, plan, tc.index)
		}
	}

	start = time.Now()
	evs, err := db.QueryEvents(ctx, store.EventFilter{LoginID: "lgn-target"}, 0, 500)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 5 {
		t.Fatalf("login has %d events, want 5", len(evs))
	}
	for _, e := range evs {
		if e.LoginID != "lgn-target" {
			t.Fatalf("login query returned %+v", e)
		}
	}
	t.Logf("one login's 5 events among %d: %s", size, took)
	// Generous for a loaded machine; the scan this replaces read every row.
	if took > 2*time.Second {
		t.Errorf("one login's events took %s", took)
	}
}

func queryPlan(t *testing.T, db *DB, query string, args ...any) string {
	t.Helper()
	rows, err := db.sql.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var steps []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		steps = append(steps, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(steps, "; ")
}

// BenchmarkLoginEvents compares how a login's event stream reads its
// events from a log of 200k: the old way (every event in pages of 500,
// filtered in Go) and the query that filters through an index.
func BenchmarkLoginEvents(b *testing.B) {
	db, err := Open(b.Context(), filepath.Join(b.TempDir(), "hearth.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	want := fillEvents(b, db, 200_000, 100)
	ctx := b.Context()
	b.Run("full-scan", func(b *testing.B) {
		for b.Loop() {
			n, after := 0, int64(0)
			for {
				evs, err := db.ListEvents(ctx, after, 500)
				if err != nil {
					b.Fatal(err)
				}
				for _, e := range evs {
					if e.LoginID == "lgn-target" {
						n++
					}
					after = e.ID
				}
				if len(evs) < 500 {
					break
				}
			}
			if n != want {
				b.Fatalf("found %d events, want %d", n, want)
			}
		}
	})
	b.Run("indexed", func(b *testing.B) {
		for b.Loop() {
			evs, err := db.QueryEvents(ctx, store.EventFilter{LoginID: "lgn-target"}, 0, 500)
			if err != nil {
				b.Fatal(err)
			}
			if len(evs) != want {
				b.Fatalf("found %d events, want %d", len(evs), want)
			}
		}
	})
}

// TestEventsAppendOnlyBeyondRetention holds the schema to the log's
// contract once retention has run: below the horizon events may go (and
// only retention moves it), above it nothing changes, disappears or is
// slipped in, whatever SQL ordinary code runs.
func TestEventsAppendOnlyBeyondRetention(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	var ids []int64
	for i := range 10 {
		e, err := db.AppendEvent(ctx, store.Event{At: time.Date(2025, 1, 1, 0, i, 0, 0, time.UTC), Type: "test", Message: fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	n, err := db.PruneEvents(ctx, store.EventRetention{Before: time.Date(2025, 1, 1, 0, 4, 0, 0, time.UTC), Batch: 100})
	if err != nil || n != 4 {
		t.Fatalf("prune: %d, %v; want 4 removed", n, err)
	}
	horizon, newest := ids[3], ids[9]
	refused := []struct {
		stmt string
		args []any
	}{
		{`UPDATE events SET message = 'changed' WHERE id = ?`, []any{ids[5]}},
		{`UPDATE events SET at = NULL`, nil},
		{`DELETE FROM events WHERE id = ?`, []any{ids[5]}},
		{`DELETE FROM events WHERE id = ?`, []any{newest}},
		{`DELETE FROM events`, nil},
		// The horizon: only forward, not past the newest id, one row.
		{`UPDATE event_horizon SET horizon = ?`, []any{horizon - 1}},
		{`UPDATE event_horizon SET horizon = ?`, []any{newest + 1}},
		{`UPDATE event_horizon SET one = 2`, nil},
		{`DELETE FROM event_horizon`, nil},
		{`INSERT INTO event_horizon (one, horizon) VALUES (2, 0)`, nil},
		{`INSERT OR REPLACE INTO event_horizon (one, horizon) VALUES (1, 0)`, nil},
		// New events get new, highest ids.
		{`INSERT OR REPLACE INTO events (id, at, type, vm_id, user_id, from_state, to_state, message)
			VALUES (?, NULL, 'test', '', '', '', '', 'replaced')`, []any{newest}},
		{`INSERT INTO events (id, at, type, vm_id, user_id, from_state, to_state, message)
			VALUES (?, NULL, 'test', '', '', '', '', 'slipped in')`, []any{horizon}},
		{`INSERT INTO events (id, at, type, vm_id, user_id, from_state, to_state, message)
			VALUES (-1, NULL, 'test', '', '', '', '', 'slipped in')`, nil},
	}
	for _, r := range refused {
		_, err := db.sql.ExecContext(ctx, r.stmt, r.args...)
		if err == nil || !(strings.Contains(err.Error(), "append-only") || strings.Contains(err.Error(), "horizon")) {
			t.Errorf("%s %v: got %v, want a trigger to abort it", r.stmt, r.args, err)
		}
	}
	got, err := db.ListEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 || got[0].ID != ids[4] || got[5].ID != newest || got[0].Message != "4" {
		t.Fatalf("events after refused changes: %+v", got)
	}
	if h, err := db.EventHorizon(ctx); err != nil || h != horizon {
		t.Fatalf("horizon %d, %v; want %d", h, err, horizon)
	}

	// What retention itself does is allowed: forget events up to a
	// horizon moved forward.
	if _, err := db.sql.ExecContext(ctx, `UPDATE event_horizon SET horizon = ?`, ids[5]); err != nil {
		t.Fatalf("advance the horizon: %v", err)
	}
	if _, err := db.sql.ExecContext(ctx, `DELETE FROM events WHERE id <= ?`, ids[5]); err != nil {
		t.Fatalf("delete below the horizon: %v", err)
	}
	e, err := db.AppendEvent(ctx, store.Event{Type: "test", Message: "after"})
	if err != nil || e.ID != newest+1 {
		t.Fatalf("append after: %+v, %v; want id %d", e, err, newest+1)
	}
}

// TestMigrateEventRetention upgrades a database with events: they stay,
// with nothing forgotten yet, and retention can forget them.
func TestMigrateEventRetention(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	ctx := t.Context()
	raw := rawAtVersion(t, path, 4)
	for i := range 3 {
		if _, err := raw.ExecContext(ctx, `INSERT INTO events (at, type, vm_id, user_id, login_id, from_state, to_state, message)
			VALUES (?, 'login.state', '', 'u-1', 'lgn-1', 'starting', 'awaiting_user', ?)`,
			timeArg(time.Date(2025, 1, 1, i, 0, 0, 0, time.UTC)), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}

	db := openClosed(t, path)
	if h, err := db.EventHorizon(ctx); err != nil || h != 0 {
		t.Fatalf("horizon after migrating: %d, %v; want 0", h, err)
	}
	evs, err := db.QueryEvents(ctx, store.EventFilter{LoginID: "lgn-1", UserID: "u-1"}, 0, 0)
	if err != nil || len(evs) != 3 {
		t.Fatalf("login events after migrating: %+v, %v", evs, err)
	}
	n, err := db.PruneEvents(ctx, store.EventRetention{Before: time.Date(2025, 1, 1, 2, 0, 0, 0, time.UTC), Batch: 10})
	if err != nil || n != 2 {
		t.Fatalf("prune migrated events: %d, %v; want 2", n, err)
	}
	if h, err := db.EventHorizon(ctx); err != nil || h != evs[1].ID {
		t.Fatalf("horizon: %d, %v; want %d", h, err, evs[1].ID)
	}
}
