package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/hearth-project/hearth/internal/store"
)

// CreateLease records l; a held address or a VM that already holds one is
// store.ErrConflict.
func (db *DB) CreateLease(ctx context.Context, l store.Lease) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx,
			`INSERT INTO leases (ip, vm_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
			l.IP, l.VMID, timeArg(l.CreatedAt))
		if err != nil {
			return err
		}
		return requireRow(res, store.ErrConflict)
	})
	if err != nil {
		return fmt.Errorf("lease %s to %s: %w", l.IP, l.VMID, err)
	}
	return nil
}

// GetLease returns vmID's lease or store.ErrNotFound.
func (db *DB) GetLease(ctx context.Context, vmID string) (store.Lease, error) {
	row := db.sql.QueryRowContext(ctx, `SELECT ip, vm_id, created_at FROM leases WHERE vm_id = ?`, vmID)
	l, err := scanLease(row)
	if err != nil {
		return store.Lease{}, fmt.Errorf("get lease of %s: %w", vmID, err)
	}
	return l, nil
}

// ListLeases returns every lease ordered by address text.
func (db *DB) ListLeases(ctx context.Context) ([]store.Lease, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT ip, vm_id, created_at FROM leases ORDER BY ip`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	ls, err := collect(rows, scanLease)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	return ls, nil
}

// DeleteLease releases vmID's lease, if any.
func (db *DB) DeleteLease(ctx context.Context, vmID string) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM leases WHERE vm_id = ?`, vmID)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease of %s: %w", vmID, err)
	}
	return nil
}

func scanLease(r rowScanner) (store.Lease, error) {
	var l store.Lease
	if err := r.Scan(&l.IP, &l.VMID, scanTime(&l.CreatedAt)); err != nil {
		return store.Lease{}, noRows(err)
	}
	return l, nil
}
