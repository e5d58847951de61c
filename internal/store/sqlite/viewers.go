package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/hearth-project/hearth/internal/store"
)

// ViewerEpoch returns vmID's viewer epoch: 0 until its viewers are first
// revoked, and for VMs the store does not know.
func (db *DB) ViewerEpoch(ctx context.Context, vmID string) (uint64, error) {
	var epoch int64
	err := db.sql.QueryRowContext(ctx, `SELECT epoch FROM viewer_epochs WHERE vm_id = ?`, vmID).Scan(&epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("viewer epoch of %s: %w", vmID, err)
	}
	return uint64(epoch), nil
}

// BumpViewerEpoch moves vmID's viewer epoch on by one and returns it;
// store.ErrNotFound if there is no such VM.
func (db *DB) BumpViewerEpoch(ctx context.Context, vmID string) (uint64, error) {
	var epoch int64
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		if _, err := getVM(ctx, tx, vmID); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `INSERT INTO viewer_epochs (vm_id, epoch) VALUES (?, 1)
			ON CONFLICT (vm_id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch`, vmID).Scan(&epoch)
	})
	if err != nil {
		return 0, fmt.Errorf("bump viewer epoch of %s: %w", vmID, err)
	}
	return uint64(epoch), nil
}

var _ store.ViewerEpochs = (*DB)(nil)
