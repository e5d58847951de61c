// Package sqlite is hearth's embedded store backend: a single SQLite file in
// WAL mode, driven by the pure-Go modernc.org/sqlite driver (no cgo).
//
// Concurrency: one *sql.DB holds a small pool of connections so reads run in
// parallel (WAL readers never block the writer nor each other). Every write
// runs in a transaction that first takes an in-process write lock (a
// one-slot semaphore that honours context cancellation) and then issues
// BEGIN IMMEDIATE, so at most one write transaction per process is open at a
// time, read-modify-write cycles such as UpdateVM are serialized, and no
// transaction ever has to upgrade a read lock to a write lock (which SQLite
// can only resolve by failing with SQLITE_BUSY). BEGIN IMMEDIATE together with
// busy_timeout also serializes writers from other processes sharing the file.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	sqlitedrv "modernc.org/sqlite" // also registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hearth-project/hearth/internal/store"
)

const (
	driverName = "sqlite"
	// maxConns bounds the pool. Only one connection writes at a time; the
	// rest serve concurrent readers.
	maxConns = 8
	// busyTimeoutMillis is how long a connection waits for a lock held by
	// another process before failing with SQLITE_BUSY.
	busyTimeoutMillis = 5000
)

// DB is a store.Store backed by one SQLite database file.
type DB struct {
	sql *sql.DB
	// writeSem is a one-slot semaphore held for the whole of every write
	// transaction.
	writeSem chan struct{}
	// now returns the current time in UTC.
	now func() time.Time
}

var _ store.Store = (*DB)(nil)

// querier is what both *sql.DB and *sql.Tx offer, so helpers can run inside
// or outside a transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// rowScanner is what both *sql.Row and *sql.Rows offer.
type rowScanner interface {
	Scan(dest ...any) error
}

// Open opens (creating it if needed) the database file at path, configures
// every connection (WAL, busy_timeout, foreign keys, synchronous=NORMAL,
// recursive triggers) and applies any pending schema migrations. It refuses
// a database whose schema is newer than this binary knows, with an error
// wrapping ErrSchemaTooNew. The directory containing path must exist. The
// database and its -wal and -shm files are private to their owner (0600),
// whatever the umask.
func Open(ctx context.Context, path string) (*DB, error) {
	name, err := dsn(path)
	if err != nil {
		return nil, err
	}
	if err := makePrivate(path); err != nil {
		return nil, err
	}
	sqlDB, err := openDB(name) // errors classified (unavailable.go)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	sqlDB.SetMaxOpenConns(maxConns)
	sqlDB.SetMaxIdleConns(maxConns)

	db := &DB{
		sql:      sqlDB,
		writeSem: make(chan struct{}, 1),
		now:      func() time.Time { return time.Now().UTC() },
	}
	if err := db.initRetrying(ctx); err != nil {
		if cerr := sqlDB.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// initRetrying runs init, retrying for up to the busy timeout while it fails
// with SQLITE_BUSY. Converting a new file to WAL takes an exclusive lock, and
// a connection that meets it while running its journal_mode pragma can fail
// at once without waiting in the busy handler; this happens when several
// processes open a new database at the same moment. Everything init does is
// idempotent, so it is safe to repeat.
func (db *DB) initRetrying(ctx context.Context) error {
	deadline := time.Now().Add(busyTimeoutMillis * time.Millisecond)
	delay := 5 * time.Millisecond
	for {
		err := db.init(ctx)
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			return err
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return errors.Join(err, ctx.Err())
		case <-timer.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// init checks the connection and brings the schema up to date.
func (db *DB) init(ctx context.Context) error {
	if err := db.sql.PingContext(ctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return db.migrate(ctx)
}

// isBusy reports whether err is SQLite's SQLITE_BUSY, in any extended form.
func isBusy(err error) bool {
	var se *sqlitedrv.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// uriPathEscaper escapes the characters that would otherwise end the path
// part of an SQLite URI filename.
var uriPathEscaper = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// dsn builds the driver's data source name for the database file at path.
// The _pragma parameters are executed by the driver on every new connection,
// and _txlock=immediate makes every read-write transaction BEGIN IMMEDIATE.
func dsn(path string) (string, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return "", fmt.Errorf("open %q: need the path of a database file", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", path, err)
	}
	params := []string{
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeoutMillis),
		"_pragma=journal_mode(WAL)",
		"_pragma=foreign_keys(1)",
		"_pragma=synchronous(NORMAL)",
		// REPLACE's implicit deletes run delete triggers too, so it cannot
		// get around the event log's (migrations/0006).
		"_pragma=recursive_triggers(1)",
		"_txlock=immediate",
	}
	uriPath := filepath.ToSlash(abs)
	if !strings.HasPrefix(uriPath, "/") {
		uriPath = "/" + uriPath // a Windows drive letter: file:/C:/...
	}
	return "file:" + uriPathEscaper.Replace(uriPath) + "?" + strings.Join(params, "&"), nil
}

// Ping checks that the database is reachable.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.sql.PingContext(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Close closes every connection. The DB must not be used afterwards.
func (db *DB) Close() error {
	if err := db.sql.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// writeTx runs fn in a write transaction, committing if fn returns nil and
// rolling back otherwise. It holds the process-wide write lock throughout.
// fn's error is returned as is (joined with a rollback failure, if any).
func (db *DB) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	select {
	case db.writeSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-db.writeSem }()

	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		// ErrTxDone means database/sql already rolled back because ctx ended.
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("rollback: %w", rerr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// execOne runs a statement that must affect exactly one row and returns
// store.ErrNotFound if it affected none.
func execOne(ctx context.Context, q querier, query string, args ...any) error {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	return requireRow(res, store.ErrNotFound)
}

// requireRow returns ifNone when res reports that no row was affected.
func requireRow(res sql.Result, ifNone error) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("rows affected: %w", err)
	}
	if n == 0 {
		return ifNone
	}
	return nil
}

// placeholders returns n comma-separated "?".
func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}
