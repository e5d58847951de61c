package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"
)

// ErrSchemaTooNew is returned (wrapped) by Open when the database was
// migrated by a newer hearth than this binary.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary supports")

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one schema step, read from migrations/NNNN_name.sql.
type migration struct {
	version int
	name    string
	sql     string
}

// loadedMigrations parses the embedded migrations once.
var loadedMigrations = sync.OnceValues(func() ([]migration, error) {
	return parseMigrations(migrationFiles, "migrations")
})

// parseMigrations reads the *.sql files in dir of fsys, ordered by version.
// Versions must run 1, 2, 3, ... without gaps or duplicates.
func parseMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir) // sorted by file name
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m, err := readMigration(fsys, dir, e.Name())
		if err != nil {
			return nil, err
		}
		if want := len(ms) + 1; m.version != want {
			return nil, fmt.Errorf("migration %s: version %d, want %d", m.name, m.version, want)
		}
		ms = append(ms, m)
	}
	if len(ms) == 0 {
		return nil, errors.New("no migrations embedded")
	}
	return ms, nil
}

// readMigration reads one migration file named NNNN_description.sql.
func readMigration(fsys fs.FS, dir, name string) (migration, error) {
	prefix, _, ok := strings.Cut(name, "_")
	if !ok {
		return migration{}, fmt.Errorf("migration %s: name must be NNNN_description.sql", name)
	}
	version, err := strconv.Atoi(prefix)
	if err != nil || version <= 0 {
		return migration{}, fmt.Errorf("migration %s: bad version %q", name, prefix)
	}
	body, err := fs.ReadFile(fsys, path.Join(dir, name))
	if err != nil {
		return migration{}, fmt.Errorf("migration %s: %w", name, err)
	}
	return migration{version: version, name: name, sql: string(body)}, nil
}

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	applied_at TEXT NOT NULL
)`

// migrate applies, in order and each in its own transaction, every embedded
// migration newer than the database's schema version.
func (db *DB) migrate(ctx context.Context) error {
	ms, err := loadedMigrations()
	if err != nil {
		return err
	}
	latest := ms[len(ms)-1].version
	err = db.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, createMigrationsTable)
		return err
	})
	if err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	current, err := schemaVersion(ctx, db.sql)
	if err != nil {
		return err
	}
	if err := checkNotTooNew(current, latest); err != nil {
		return err
	}
	for _, m := range ms {
		if m.version <= current {
			continue
		}
		err := db.writeTx(ctx, func(tx *sql.Tx) error { return db.applyMigration(ctx, tx, m, latest) })
		if err != nil {
			return fmt.Errorf("migration %s: %w", m.name, err)
		}
	}
	return nil
}

// applyMigration runs m in tx unless the schema already includes it (another
// process may have migrated since migrate read the version).
func (db *DB) applyMigration(ctx context.Context, tx *sql.Tx, m migration, latest int) error {
	current, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	if err := checkNotTooNew(current, latest); err != nil {
		return err
	}
	if current >= m.version {
		return nil
	}
	if current != m.version-1 {
		return fmt.Errorf("schema is at version %d, cannot apply version %d", current, m.version)
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
		m.version, timeArg(db.now()))
	return err
}

// checkNotTooNew refuses a schema version beyond what this binary knows.
func checkNotTooNew(current, latest int) error {
	if current > latest {
		return fmt.Errorf("schema version %d, this binary knows up to %d: %w", current, latest, ErrSchemaTooNew)
	}
	return nil
}

// SchemaVersion returns the highest migration version applied to the
// database (0 if none).
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	return schemaVersion(ctx, db.sql)
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
