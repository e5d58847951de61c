package app

import (
	"context"
	"fmt"
	"io"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/store"
)

// The image build the command line's 'image build --local' runs: it
// writes this host's database and image files directly, so it runs on the
// daemon's host, as root, with the daemon running or not (the other image
// verbs go through the daemon's API).

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
