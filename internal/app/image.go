package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/image/build"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/imagereg"
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
