package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"

	sqlitedrv "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// Errors that say the database cannot take a request now, rather than
// that the request is wrong, are errdefs.ErrUnavailable with a message for
// the caller (the API answers 503 with it). The mapping is done once, on
// every error the SQLite driver returns, by wrapping the driver: every
// store method gets it without a word of its own.

var (
	errBusy = errdefs.Unavailablef("the database is busy; try again")
	errFull = errdefs.Unavailablef("the database's disk is full")
	errDisk = errdefs.Unavailablef("the database cannot be read or written (disk error)")
)

// unavailableError is a driver error of the unavailable class: both the
// *sqlitedrv.Error (for codes) and the class error (for the API).
type unavailableError struct {
	err, class error
}

func (e *unavailableError) Error() string   { return e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{e.class, e.err} }

// classify returns err, marked unavailable if SQLite says the database is
// busy, locked, full or failing.
func classify(err error) error {
	var se *sqlitedrv.Error
	if err == nil || !errors.As(err, &se) {
		return err
	}
	var class error
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL:
		class = errBusy
	case sqlite3.SQLITE_FULL:
		class = errFull
	case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN:
		class = errDisk
	default:
		return err
	}
	return &unavailableError{err: err, class: class}
}

// openDB opens a *sql.DB on the SQLite driver, wrapped so that every error
// goes through classify.
func openDB(name string) (*sql.DB, error) {
	probe, err := sql.Open(driverName, name) // connects to nothing
	if err != nil {
		return nil, err
	}
	drv := probe.Driver()
	if err := probe.Close(); err != nil {
		return nil, err
	}
	return sql.OpenDB(connector{drv: drv, name: name}), nil
}

type connector struct {
	drv  driver.Driver
	name string
}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.drv.Open(c.name)
	if err != nil {
		return nil, classify(err)
	}
	return &conn{dc}, nil
}

func (c connector) Driver() driver.Driver { return c.drv }

// conn passes through what the SQLite driver's connection offers.
type conn struct{ c driver.Conn }

var (
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
)

func (c *conn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

func (c *conn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	s, err := c.c.(driver.ConnPrepareContext).PrepareContext(ctx, q)
	if err != nil {
		return nil, classify(err)
	}
	return &stmt{s}, nil
}

func (c *conn) Close() error { return classify(c.c.Close()) }

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	t, err := c.c.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, classify(err)
	}
	return tx{t}, nil
}

func (c *conn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	r, err := c.c.(driver.ExecerContext).ExecContext(ctx, q, args)
	return r, classify(err)
}

func (c *conn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	r, err := c.c.(driver.QueryerContext).QueryContext(ctx, q, args)
	if err != nil {
		return nil, classify(err)
	}
	return rows{r}, nil
}

func (c *conn) Ping(ctx context.Context) error { return classify(c.c.(driver.Pinger).Ping(ctx)) }

func (c *conn) ResetSession(ctx context.Context) error {
	return c.c.(driver.SessionResetter).ResetSession(ctx) // ErrBadConn passes as is
}

func (c *conn) IsValid() bool { return c.c.(driver.Validator).IsValid() }

type stmt struct{ s driver.Stmt }

var (
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

func (s *stmt) Close() error  { return classify(s.s.Close()) }
func (s *stmt) NumInput() int { return s.s.NumInput() }

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	r, err := s.s.Exec(args) //nolint:staticcheck // the driver's own fallback
	return r, classify(err)
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	r, err := s.s.Query(args) //nolint:staticcheck // the driver's own fallback
	if err != nil {
		return nil, classify(err)
	}
	return rows{r}, nil
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	r, err := s.s.(driver.StmtExecContext).ExecContext(ctx, args)
	return r, classify(err)
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	r, err := s.s.(driver.StmtQueryContext).QueryContext(ctx, args)
	if err != nil {
		return nil, classify(err)
	}
	return rows{r}, nil
}

type rows struct{ r driver.Rows }

func (r rows) Columns() []string              { return r.r.Columns() }
func (r rows) Close() error                   { return classify(r.r.Close()) }
func (r rows) Next(dest []driver.Value) error { return classify(r.r.Next(dest)) } // io.EOF passes as is

type tx struct{ t driver.Tx }

func (t tx) Commit() error   { return classify(t.t.Commit()) }
func (t tx) Rollback() error { return classify(t.t.Rollback()) }
