package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/hearth-project/hearth/internal/store"
)

// minImagePrefix is the shortest ID prefix GetImage resolves.
const minImagePrefix = 8

const imageColumns = `id, name, role, kernel_path, initrd_path, rootfs_path, manifest, size_bytes, created_at,
	status, verified_at, verify_report`

// PutImage inserts img or replaces every field of the image with img.ID.
func (db *DB) PutImage(ctx context.Context, img store.Image) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO images (`+imageColumns+`) VALUES (`+placeholders(12)+`)
			ON CONFLICT (id) DO UPDATE SET
				name = excluded.name,
				role = excluded.role,
				kernel_path = excluded.kernel_path,
				initrd_path = excluded.initrd_path,
				rootfs_path = excluded.rootfs_path,
				manifest = excluded.manifest,
				size_bytes = excluded.size_bytes,
				created_at = excluded.created_at,
				status = excluded.status,
				verified_at = excluded.verified_at,
				verify_report = excluded.verify_report`,
			img.ID, img.Name, img.Role, img.KernelPath, img.InitrdPath, img.RootfsPath,
			img.Manifest, img.SizeBytes, timeArg(img.CreatedAt),
			string(imageStatus(img.Status)), timeArg(img.VerifiedAt), img.VerifyReport)
		return err
	})
	if err != nil {
		return fmt.Errorf("put image %s: %w", img.ID, err)
	}
	return nil
}

// GetImage resolves ref as an exact image ID, then as a unique ID prefix of at
// least 8 characters (store.ErrConflict if several images match), then as a
// name (the newest image with that name). It returns store.ErrNotFound if
// nothing matches.
func (db *DB) GetImage(ctx context.Context, ref string) (store.Image, error) {
	img, err := db.resolveImage(ctx, ref)
	if err != nil {
		return store.Image{}, fmt.Errorf("get image %q: %w", ref, err)
	}
	return img, nil
}

func (db *DB) resolveImage(ctx context.Context, ref string) (store.Image, error) {
	if ref == "" {
		return store.Image{}, store.ErrNotFound
	}
	img, err := scanImage(db.sql.QueryRowContext(ctx,
		`SELECT `+imageColumns+` FROM images WHERE id = ?`, ref))
	if !errors.Is(err, store.ErrNotFound) {
		return img, err // found, or failed
	}
	if len(ref) >= minImagePrefix {
		img, err = db.imageByPrefix(ctx, ref)
		if !errors.Is(err, store.ErrNotFound) {
			return img, err
		}
	}
	return scanImage(db.sql.QueryRowContext(ctx,
		`SELECT `+imageColumns+` FROM images WHERE name = ? ORDER BY created_at DESC, id DESC LIMIT 1`, ref))
}

// imageByPrefix returns the only image whose ID starts with prefix.
func (db *DB) imageByPrefix(ctx context.Context, prefix string) (store.Image, error) {
	rows, err := db.sql.QueryContext(ctx,
		`SELECT `+imageColumns+` FROM images WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 2`, prefix)
	if err != nil {
		return store.Image{}, err
	}
	imgs, err := collect(rows, scanImage)
	switch {
	case err != nil:
		return store.Image{}, err
	case len(imgs) == 0:
		return store.Image{}, store.ErrNotFound
	case len(imgs) > 1:
		return store.Image{}, fmt.Errorf("ambiguous id prefix matches %s and %s: %w", imgs[0].ID, imgs[1].ID, store.ErrConflict)
	}
	return imgs[0], nil
}

// ListImages returns every image, oldest first.
func (db *DB) ListImages(ctx context.Context) ([]store.Image, error) {
	rows, err := db.sql.QueryContext(ctx, `SELECT `+imageColumns+` FROM images ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	imgs, err := collect(rows, scanImage)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return imgs, nil
}

// DeleteImage removes the image with exactly id, or returns store.ErrNotFound.
func (db *DB) DeleteImage(ctx context.Context, id string) error {
	err := db.writeTx(ctx, func(tx *sql.Tx) error {
		return execOne(ctx, tx, `DELETE FROM images WHERE id = ?`, id)
	})
	if err != nil {
		return fmt.Errorf("delete image %s: %w", id, err)
	}
	return nil
}

func scanImage(r rowScanner) (store.Image, error) {
	var img store.Image
	var status string
	err := r.Scan(&img.ID, &img.Name, &img.Role, &img.KernelPath, &img.InitrdPath, &img.RootfsPath,
		&img.Manifest, &img.SizeBytes, scanTime(&img.CreatedAt), &status, scanTime(&img.VerifiedAt), &img.VerifyReport)
	if err != nil {
		return store.Image{}, noRows(err)
	}
	img.Status = store.ImageStatus(status)
	return img, nil
}

// imageStatus defaults an empty status to unverified.
func imageStatus(s store.ImageStatus) store.ImageStatus {
	if s == "" {
		return store.ImageUnverified
	}
	return s
}
