package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/image/build"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/imagereg"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func withStore(ctx context.Context, cfg config.Config, fn func(store.Store) error) error {
	if err := cfg.EnsureDirs(); err != nil {
		return err
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(st)
}

// defaultAgentPath finds hearth-agent next to the running binary.
func defaultAgentPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), "hearth-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no hearth-agent next to %s: build it first (make build) or pass --agent", exe)
	}
	return p, nil
}

// imageRegistry is the registry of cfg's store st.
func imageRegistry(cfg config.Config, st store.Store) *imagereg.Registry {
	return &imagereg.Registry{Store: st, ImageDir: cfg.ImagesPath(), CacheDir: cfg.CacheDir}
}

// newImageBuilds is the daemon's image build service: builds run
// imagereg.Registry.Build, as the CLI's do, with the hearth-agent next to
// the daemon's binary, and log under the state dir.
func newImageBuilds(cfg config.Config, images *imagereg.Registry, log *slog.Logger) (*imagebuild.Service, error) {
	return imagebuild.New(imagebuild.Config{LogDir: filepath.Join(cfg.StateDir, "builds"), Agent: defaultAgentPath},
		imagebuild.Deps{Log: log.With("component", "imagebuild"), Build: func(ctx context.Context, job imagebuild.Job, progress io.Writer) (store.Image, error) {
			return images.Build(ctx, build.Options{Spec: job.Spec, AgentBinary: job.Agent, AgentVersion: Version,
				KernelPackage: job.KernelPackage}, progress)
		}})
}

// BuildImage builds a profile (or finds it cached), verifies the result
// against its manifest and records it in the store with the verdict
// (imagereg.Registry.Build, which the daemon's build jobs run too).
func BuildImage(ctx context.Context, cfg config.Config, profile, agentPath, kernelPkg string, progress io.Writer) (store.Image, error) {
	if agentPath == "" {
		p, err := defaultAgentPath()
		if err != nil {
			return store.Image{}, err
		}
		agentPath = p
	}
	var img store.Image
	err := withStore(ctx, cfg, func(st store.Store) error {
		var err error
		img, err = imageRegistry(cfg, st).Build(ctx, build.Options{Profile: profile, AgentBinary: agentPath, AgentVersion: Version,
			KernelPackage: kernelPkg}, progress)
		return err
	})
	return img, err
}

func verifyCmd(ctx context.Context, cfg config.Config, st store.Store, ref string, stdout io.Writer) error {
	img, summary, err := imageRegistry(cfg, st).Verify(ctx, ref)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "image %s (%s): %s\n", img.Name, short(img.ID), img.Status)
	if img.Status != store.ImageVerified {
		fmt.Fprintln(stdout, summary)
		return fmt.Errorf("image %s failed verification", img.Name)
	}
	return nil
}

func listImages(ctx context.Context, st store.Store, stdout io.Writer) error {
	imgs, err := st.ListImages(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tROLE\tSTATUS\tSIZE\tCREATED")
	for _, im := range imgs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1fMiB\t%s\n", im.Name, short(im.ID), im.Role, im.Status,
			float64(im.SizeBytes)/(1<<20), im.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func inspectImage(ctx context.Context, st store.Store, ref string, stdout io.Writer) error {
	img, err := st.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	out := map[string]any{
		"id": img.ID, "name": img.Name, "role": img.Role, "status": img.Status, "size_bytes": img.SizeBytes,
		"created_at": img.CreatedAt, "kernel": img.KernelPath, "initrd": img.InitrdPath, "rootfs": img.RootfsPath,
		"manifest": json.RawMessage(orNull(img.Manifest)), "verification": json.RawMessage(orNull(img.VerifyReport)),
	}
	if !img.VerifiedAt.IsZero() {
		out["verified_at"] = img.VerifiedAt
	}
	return safetext.WriteJSON(stdout, out)
}

func orNull(b []byte) []byte {
	if len(b) == 0 {
		return []byte("null")
	}
	return b
}

// removeImage deletes an image unless a VM that is not destroyed uses it.
func removeImage(ctx context.Context, cfg config.Config, st store.Store, ref string, stdout io.Writer) error {
	img, err := imageRegistry(cfg, st).Remove(ctx, ref)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed image %s (%s)\n", img.Name, short(img.ID))
	return nil
}

// collectImages removes image directories the store does not know (left by
// removed images or another state dir's builds) and unpacked kernels no
// image uses.
func collectImages(ctx context.Context, cfg config.Config, st store.Store, stdout io.Writer) error {
	c, err := imageRegistry(cfg, st).Collect(ctx)
	for _, p := range c.Images {
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	for _, p := range c.Kernels {
		fmt.Fprintf(stdout, "removed unused kernel cache %s\n", p)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "freed %.1f MiB\n", float64(c.FreedBytes)/(1<<20))
	return nil
}
