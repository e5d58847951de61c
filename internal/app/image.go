package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func cmdImage(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 {
		return errors.New("usage: hearth image build|verify|list|inspect|rm|gc")
	}
	fs := flag.NewFlagSet("image "+args[0], flag.ContinueOnError)
	var c common
	c.register(fs)
	profile := fs.String("profile", "minimal", "profile to build (or give a spec file as the argument)")
	agent := fs.String("agent", "", "static hearth-agent binary (default: hearth-agent next to this binary)")
	kernel := fs.String("kernel-package", "", "Debian kernel package (default: linux-image-amd64's current one)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	one := func() (string, error) { return onlyArg(pos, "usage: hearth image "+args[0]+" IMAGE") }
	switch args[0] {
	case "build":
		name := *profile
		if len(pos) == 1 {
			name = pos[0]
		}
		img, err := BuildImage(ctx, cfg, name, *agent, *kernel, stdout)
		if err != nil {
			return err
		}
		if img.Status != store.ImageVerified {
			return fmt.Errorf("image %s was built but failed verification; see hearth image inspect %s", img.Name, short(img.ID))
		}
		return nil
	case "verify":
		ref, err := one()
		if err != nil {
			return err
		}
		return withStore(ctx, cfg, func(st store.Store) error { return verifyCmd(ctx, cfg, st, ref, stdout) })
	case "list":
		return withStore(ctx, cfg, func(st store.Store) error { return listImages(ctx, st, stdout) })
	case "inspect":
		ref, err := one()
		if err != nil {
			return err
		}
		return withStore(ctx, cfg, func(st store.Store) error { return inspectImage(ctx, st, ref, stdout) })
	case "rm":
		ref, err := one()
		if err != nil {
			return err
		}
		return withStore(ctx, cfg, func(st store.Store) error { return removeImage(ctx, cfg, st, ref, stdout) })
	case "gc":
		return withStore(ctx, cfg, func(st store.Store) error { return collectImages(ctx, cfg, st, stdout) })
	default:
		return fmt.Errorf("unknown image command %q", args[0])
	}
}

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
	return printJSON(stdout, out)
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
