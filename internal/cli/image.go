package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/hearth-project/hearth/internal/app"
)

const imageUsage = `usage: hearth image build [--profile minimal | SPEC.yaml] [--agent PATH] [--kernel-package PKG]
       hearth image list | verify IMAGE | inspect IMAGE | rm IMAGE | gc

` + hostNote

func cmdImage(ctx context.Context, args []string, out output) error {
	if len(args) < 1 {
		return errors.New(imageUsage)
	}
	var c common
	fs := hostFlags("image "+args[0], imageUsage, &c, out)
	profile := fs.String("profile", "minimal", "profile to build (or give a spec file as the argument) (build)")
	agent := fs.String("agent", "", "static hearth-agent binary (default: hearth-agent next to this binary) (build)")
	kernel := fs.String("kernel-package", "", "Debian kernel package (default: linux-image-amd64's current one) (build)")
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
		return app.BuildVerifiedImage(ctx, cfg, name, *agent, *kernel, out.stdout)
	case "verify":
		ref, err := one()
		if err != nil {
			return err
		}
		return app.VerifyImage(ctx, cfg, ref, out.stdout)
	case "list":
		return app.ListImages(ctx, cfg, out.stdout)
	case "inspect":
		ref, err := one()
		if err != nil {
			return err
		}
		return app.InspectImage(ctx, cfg, ref, out.stdout)
	case "rm":
		ref, err := one()
		if err != nil {
			return err
		}
		return app.RemoveImage(ctx, cfg, ref, out.stdout)
	case "gc":
		return app.CollectImages(ctx, cfg, out.stdout)
	default:
		return fmt.Errorf("unknown image command %q\n%s", args[0], imageUsage)
	}
}
