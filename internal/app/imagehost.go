package app

import (
	"context"
	"fmt"
	"io"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/store"
)

// The image operations the command line's image verbs call. They open
// this host's database and image files directly, so they run on the
// daemon's host, as root, with the daemon running or not.

// BuildVerifiedImage is BuildImage for the command line: an image that
// was built but failed verification is an error that says where to look.
func BuildVerifiedImage(ctx context.Context, cfg config.Config, profile, agentPath, kernelPkg string, progress io.Writer) error {
	img, err := BuildImage(ctx, cfg, profile, agentPath, kernelPkg, progress)
	if err != nil {
		return err
	}
	if img.Status != store.ImageVerified {
		return fmt.Errorf("image %s was built but failed verification; see hearth image inspect %s", img.Name, short(img.ID))
	}
	return nil
}

// VerifyImage checks the image ref (a name or id) against its manifest
// again, records the verdict and reports it on out; a failed verification
// is an error.
func VerifyImage(ctx context.Context, cfg config.Config, ref string, out io.Writer) error {
	return withStore(ctx, cfg, func(st store.Store) error { return verifyCmd(ctx, cfg, st, ref, out) })
}

// ListImages prints a table of the images the database knows.
func ListImages(ctx context.Context, cfg config.Config, out io.Writer) error {
	return withStore(ctx, cfg, func(st store.Store) error { return listImages(ctx, st, out) })
}

// InspectImage prints the image ref's record, manifest and last
// verification as JSON.
func InspectImage(ctx context.Context, cfg config.Config, ref string, out io.Writer) error {
	return withStore(ctx, cfg, func(st store.Store) error { return inspectImage(ctx, st, ref, out) })
}

// RemoveImage deletes the image ref and its files, unless a VM that is
// not destroyed uses it.
func RemoveImage(ctx context.Context, cfg config.Config, ref string, out io.Writer) error {
	return withStore(ctx, cfg, func(st store.Store) error { return removeImage(ctx, cfg, st, ref, out) })
}

// CollectImages removes image directories and kernel caches no registered
// image uses, and says how much it freed.
func CollectImages(ctx context.Context, cfg config.Config, out io.Writer) error {
	return withStore(ctx, cfg, func(st store.Store) error { return collectImages(ctx, cfg, st, out) })
}
