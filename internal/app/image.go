package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func cmdImage(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 {
		return errors.New("usage: hearth image build|list")
	}
	fs := flag.NewFlagSet("image "+args[0], flag.ContinueOnError)
	var c common
	c.register(fs)
	profile := fs.String("profile", "minimal", "profile to build")
	agent := fs.String("agent", "", "static hearth-agent binary (default: hearth-agent next to this binary)")
	kernel := fs.String("kernel-package", "", "Debian kernel package (default: linux-image-amd64's current one)")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	switch args[0] {
	case "build":
		_, err := BuildImage(ctx, cfg, *profile, *agent, *kernel, stdout)
		return err
	case "list":
		return listImages(ctx, cfg, stdout)
	default:
		return fmt.Errorf("unknown image command %q", args[0])
	}
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

// BuildImage builds a profile (or finds it cached) and records it in the
// store, so VMs can name it.
func BuildImage(ctx context.Context, cfg config.Config, profile, agentPath, kernelPkg string, progress io.Writer) (store.Image, error) {
	if agentPath == "" {
		p, err := defaultAgentPath()
		if err != nil {
			return store.Image{}, err
		}
		agentPath = p
	}
	if err := cfg.EnsureDirs(); err != nil {
		return store.Image{}, err
	}
	res, err := image.Build(ctx, image.BuildOptions{
		Profile: profile, AgentBinary: agentPath, AgentVersion: Version,
		CacheDir: cfg.CacheDir, OutputDir: cfg.ImagesPath(), KernelPackage: kernelPkg, Log: progress,
	})
	if err != nil {
		return store.Image{}, err
	}
	manifest, err := json.Marshal(res.Manifest)
	if err != nil {
		return store.Image{}, fmt.Errorf("encode manifest: %w", err)
	}
	img := store.Image{
		ID: res.Digest, Name: profile, Role: res.Manifest.Role,
		KernelPath: res.KernelPath, InitrdPath: res.InitrdPath, RootfsPath: res.RootfsPath,
		Manifest: manifest, SizeBytes: res.Manifest.Rootfs.DiskSize + res.Manifest.Kernel.Size + res.Manifest.Initrd.Size,
		CreatedAt: time.Now().UTC(),
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return store.Image{}, err
	}
	defer st.Close()
	if old, err := st.GetImage(ctx, res.Digest); err == nil && old.ID == res.Digest {
		img.CreatedAt = old.CreatedAt
	}
	if err := st.PutImage(ctx, img); err != nil {
		return store.Image{}, fmt.Errorf("record image: %w", err)
	}
	state := "built"
	if res.Cached {
		state = "cached"
	}
	fmt.Fprintf(progress, "image %s %s: %s (%s)\n", profile, short(res.Digest), res.Dir, state)
	return img, nil
}

func listImages(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return err
	}
	defer st.Close()
	imgs, err := st.ListImages(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tROLE\tSIZE\tCREATED")
	for _, im := range imgs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fMiB\t%s\n", im.Name, short(im.ID), im.Role, float64(im.SizeBytes)/(1<<20), im.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}
