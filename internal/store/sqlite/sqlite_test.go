package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openTemp(t, filepath.Join(t.TempDir(), "hearth.db"))
	})
}

// openTemp opens the database at path; the caller closes it.
func openTemp(t *testing.T, path string) *DB {
	t.Helper()
	db, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return db
}

// openClosed opens the database at path and closes it when the test ends.
func openClosed(t *testing.T, path string) *DB {
	t.Helper()
	db := openTemp(t, path)
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return db
}

// rawDB opens the database at path with the plain driver, outside the
// store, as another process or an older hearth would. It is closed when
// the test ends, if the test has not closed it.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	name, err := dsn(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open(driverName, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return raw
}

// rawAtVersion creates the database at path with the schema of the first
// n migrations, as a hearth of that version left it, and returns it open
// outside the store, for the test to write rows an upgrade must keep.
func rawAtVersion(t *testing.T, path string, n int) *sql.DB {
	t.Helper()
	ctx := t.Context()
	ms, err := loadedMigrations()
	if err != nil {
		t.Fatal(err)
	}
	raw := rawDB(t, path)
	if _, err := raw.ExecContext(ctx, createMigrationsTable); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:n] {
		if _, err := raw.ExecContext(ctx, m.sql); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if _, err := raw.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
			m.version, timeArg(time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	return raw
}

// latestVersion is the schema version this binary migrates to.
func latestVersion() (int, error) {
	ms, err := loadedMigrations()
	if err != nil {
		return 0, err
	}
	return ms[len(ms)-1].version, nil
}

func mustClose(t *testing.T, db *DB) {
	t.Helper()
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

type migrationRow struct {
	version   int
	appliedAt string
}

func migrationRows(t *testing.T, db *DB) []migrationRow {
	t.Helper()
	rows, err := db.sql.QueryContext(t.Context(), `SELECT version, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatalf("query schema_migrations: %v", err)
	}
	out, err := collect(rows, func(r rowScanner) (migrationRow, error) {
		var m migrationRow
		return m, r.Scan(&m.version, &m.appliedAt)
	})
	if err != nil {
		t.Fatalf("scan schema_migrations: %v", err)
	}
	return out
}

func TestMigrationsAppliedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	latest, err := latestVersion()
	if err != nil {
		t.Fatal(err)
	}

	db := openTemp(t, path)
	v, err := db.SchemaVersion(t.Context())
	if err != nil || v != latest {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, latest)
	}
	first := migrationRows(t, db)
	if len(first) != latest {
		t.Fatalf("schema_migrations has %d rows, want %d", len(first), latest)
	}
	mustClose(t, db)

	for range 2 {
		db = openTemp(t, path)
		v, err = db.SchemaVersion(t.Context())
		if err != nil || v != latest {
			t.Fatalf("after reopen SchemaVersion = %d, %v; want %d", v, err, latest)
		}
		again := migrationRows(t, db)
		mustClose(t, db)
		if len(again) != len(first) || again[0] != first[0] {
			t.Fatalf("reopening changed schema_migrations: %v, then %v", first, again)
		}
	}
}

func TestConcurrentOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			db, err := Open(t.Context(), path)
			if err != nil {
				t.Errorf("open: %v", err)
				return
			}
			if err := db.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	wg.Wait()
	db := openClosed(t, path)
	latest, err := latestVersion()
	if err != nil {
		t.Fatal(err)
	}
	if rows := migrationRows(t, db); len(rows) != latest {
		t.Fatalf("schema_migrations has %d rows after concurrent opens, want %d", len(rows), latest)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	latest, err := latestVersion()
	if err != nil {
		t.Fatal(err)
	}
	db := openTemp(t, path)
	_, err = db.sql.ExecContext(t.Context(),
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, latest+1, timeArg(time.Now()))
	if err != nil {
		t.Fatalf("fake a newer migration: %v", err)
	}
	mustClose(t, db)

	db, err = Open(t.Context(), path)
	if err == nil {
		mustClose(t, db)
		t.Fatal("opened a database with a newer schema")
	}
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("got %v, want an error wrapping ErrSchemaTooNew", err)
	}
}

func TestParseMigrations(t *testing.T) {
	good := fstest.MapFS{
		"m/0001_a.sql": {Data: []byte("CREATE TABLE a (x);")},
		"m/0002_b.sql": {Data: []byte("CREATE TABLE b (x);")},
		"m/README":     {Data: []byte("not a migration")},
	}
	ms, err := parseMigrations(good, "m")
	if err != nil || len(ms) != 2 || ms[1].version != 2 || ms[1].name != "0002_b.sql" {
		t.Fatalf("parseMigrations = %+v, %v", ms, err)
	}
	for name, fsys := range map[string]fstest.MapFS{
		"gap":       {"m/0001_a.sql": {}, "m/0003_c.sql": {}},
		"duplicate": {"m/0001_a.sql": {}, "m/0001_b.sql": {}},
		"no number": {"m/init.sql": {}},
		"zero":      {"m/0000_a.sql": {}},
		"empty":     {"m/README": {}},
	} {
		if ms, err := parseMigrations(fsys, "m"); err == nil {
			t.Errorf("%s: parseMigrations accepted %+v", name, ms)
		}
	}
}

// TestPragmas checks the per-connection settings on several pooled
// connections at once.
func TestPragmas(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			if err := c.Close(); err != nil {
				t.Errorf("close conn: %v", err)
			}
		}
	}()
	for range 3 {
		c, err := db.sql.Conn(ctx)
		if err != nil {
			t.Fatalf("conn: %v", err)
		}
		conns = append(conns, c)
		for pragma, want := range map[string]string{
			"journal_mode":       "wal",
			"busy_timeout":       "5000",
			"foreign_keys":       "1",
			"synchronous":        "1", // NORMAL
			"recursive_triggers": "1",
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
				t.Fatalf("pragma %s: %v", pragma, err)
			}
			if !strings.EqualFold(got, want) {
				t.Errorf("PRAGMA %s = %q, want %q", pragma, got, want)
			}
		}
	}
}

func TestEventsAppendOnly(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	e, err := db.AppendEvent(ctx, store.Event{Type: "test", Message: "original"})
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE events SET message = 'changed' WHERE id = ?`,
		`DELETE FROM events WHERE id = ?`,
		// REPLACE deletes the row it conflicts with, and SQLite runs no
		// delete trigger for that unless recursive_triggers is on.
		`INSERT OR REPLACE INTO events (id, at, type, vm_id, user_id, from_state, to_state, message)
			VALUES (?, NULL, 'test', '', '', '', '', 'changed')`,
	} {
		_, err := db.sql.ExecContext(ctx, stmt, e.ID)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: got %v, want the append-only trigger to abort it", stmt, err)
		}
	}
	events, err := db.ListEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || events[0].Message != "original" {
		t.Fatalf("events after rejected changes: %+v", events)
	}
}

func TestSchemaConstraints(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	for _, stmt := range []string{
		// Bypassing Go validation, the schema itself refuses bad rows.
		`INSERT INTO vms (id, user_id, image_id, role, vcpus, memory_mib, driver, state,
			failure_reason, dir, agent_version) VALUES ('v', '', '', '', 1, 1, '', 'exploded', '', '', '')`,
		`INSERT INTO api_keys (id, name, scope, secret_hash) VALUES ('k', '', 'root', x'00')`,
		`INSERT INTO api_keys (id, name, scope, secret_hash) VALUES ('k', '', 'user', x'00')`,
		`INSERT INTO api_keys (id, name, scope, user_id, secret_hash) VALUES ('k', '', 'user', 'nobody', x'00')`,
	} {
		if _, err := db.sql.ExecContext(ctx, stmt); err == nil {
			t.Errorf("schema accepted: %s", stmt)
		}
	}
}

// TestPersistence checks that data survives closing and reopening the file,
// with times kept to the nanosecond.
func TestPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	ctx := t.Context()
	created := time.Date(2025, 6, 7, 8, 9, 10, 123456789, time.UTC)
	vm := store.VM{
		ID: "vm-1", UserID: "u-1", ImageID: "img", State: store.StateReady,
		Handle: []byte(`{"pid":7}`), CreatedAt: created,
	}
	user := store.User{ID: "u-1", Name: "alice", CreatedAt: created}

	db := openTemp(t, path)
	if err := db.CreateUser(ctx, user); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	updated, ev, err := db.UpdateVM(ctx, vm.ID, "stop", func(v *store.VM) error {
		v.State = store.StateStopping
		return nil
	})
	if err != nil || ev == nil {
		t.Fatalf("update: %v, event %v", err, ev)
	}
	mustClose(t, db)

	db = openClosed(t, path)
	gotUser, err := db.GetUser(ctx, user.ID)
	if err != nil || gotUser != user {
		t.Fatalf("user after reopen = %+v, %v; want %+v", gotUser, err, user)
	}
	gotVM, err := db.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !gotVM.CreatedAt.Equal(created) || gotVM.CreatedAt.Nanosecond() != created.Nanosecond() {
		t.Errorf("CreatedAt after reopen = %v, want %v", gotVM.CreatedAt, created)
	}
	if !gotVM.UpdatedAt.Equal(updated.UpdatedAt) || gotVM.State != store.StateStopping || string(gotVM.Handle) != `{"pid":7}` {
		t.Errorf("vm after reopen = %+v, want %+v", gotVM, updated)
	}
	events, err := db.ListEvents(ctx, 0, 0)
	if err != nil || len(events) != 1 || events[0] != *ev {
		t.Fatalf("events after reopen = %+v, %v; want [%+v]", events, err, *ev)
	}
}

func TestOpenPaths(t *testing.T) {
	for _, path := range []string{"", ":memory:", "file:x.db"} {
		if db, err := Open(t.Context(), path); err == nil {
			mustClose(t, db)
			t.Errorf("Open(%q) succeeded", path)
		}
	}
	// Characters that are special in SQLite URI filenames.
	dir := t.TempDir()
	path := filepath.Join(dir, "odd ?name#with%25.db")
	db := openTemp(t, path)
	mustClose(t, db)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not created at %q: %v", path, err)
	}
	if _, err := Open(t.Context(), filepath.Join(dir, "missing", "hearth.db")); err == nil {
		t.Fatal("Open succeeded in a missing directory")
	}
}

func TestWriteHonoursContext(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	// Hold the write lock so the next writer has to wait for it.
	db.writeSem <- struct{}{}
	defer func() { <-db.writeSem }()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := db.CreateUser(ctx, store.User{ID: "u-1"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write while the lock is held: got %v, want a deadline error", err)
	}
}
