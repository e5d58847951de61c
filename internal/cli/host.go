package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/hearth-project/hearth/internal/app"
	"github.com/hearth-project/hearth/internal/config"
)

// The commands that run on this host as root, on its configuration and
// state: the daemon itself and the host-level operations of internal/app.

const (
	serveUsage  = "usage: hearth serve [--config FILE] [--listen ADDR] [--state-dir DIR]\n\nRuns the daemon on this host, as root."
	hostUsage   = "usage: hearth host setup\n\nSets up the host's network for VMs: the bridge, ip_forward and hearth's nftables tables,\nidempotently (the daemon also does it at start).\n\n" + hostNote
	vaultUsage  = "usage: hearth vault rotate\n\nMakes a new vault master key current and re-wraps every stored credential under it;\nold keys are removed once no credential uses them.\n\n" + hostNote
	doctorUsage = "usage: hearth doctor\n\nChecks this host for everything hearth needs and says how to fix what is missing;\nexits 1 if a check fails.\n\n" + hostNote
)

// hostFlags is a host command's flag set, with --config and --state-dir.
func hostFlags(name, usage string, c *common, out output) *flag.FlagSet {
	fs := newFlags(name, usage, out)
	c.registerHost(fs)
	return fs
}

// hostConfig parses a host command's arguments, flags only, and loads the
// configuration they name.
func hostConfig(fs *flag.FlagSet, c *common, args []string, usage string) (config.Config, error) {
	pos, err := parse(fs, args)
	if err != nil {
		return config.Config{}, err
	}
	if len(pos) != 0 {
		return config.Config{}, errors.New(usage)
	}
	return c.config()
}

func cmdServe(ctx context.Context, args []string, out output) error {
	var c common
	fs := hostFlags("serve", serveUsage, &c, out)
	listen := fs.String("listen", "", "API listen address (overrides config and HEARTH_LISTEN)")
	cfg, err := hostConfig(fs, &c, args, serveUsage)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
	}
	return app.Serve(ctx, cfg, out.stdout)
}

// cmdHost runs `hearth host setup`.
func cmdHost(ctx context.Context, args []string, out output) error {
	if len(args) < 1 || args[0] != "setup" {
		return errors.New(hostUsage)
	}
	var c common
	fs := hostFlags("host setup", hostUsage, &c, out)
	cfg, err := hostConfig(fs, &c, args[1:], hostUsage)
	if err != nil {
		return err
	}
	return app.SetupHost(ctx, cfg, out.stdout)
}

// cmdVault runs `hearth vault rotate`.
func cmdVault(ctx context.Context, args []string, out output) error {
	if len(args) < 1 || args[0] != "rotate" {
		return errors.New(vaultUsage)
	}
	var c common
	fs := hostFlags("vault rotate", vaultUsage, &c, out)
	cfg, err := hostConfig(fs, &c, args[1:], vaultUsage)
	if err != nil {
		return err
	}
	rep, err := app.RotateVault(ctx, cfg)
	if rep.NewKeyID != "" {
		fmt.Fprintf(out.stdout, "new current key %s; %d credentials re-wrapped; removed keys: %s; kept: %s\n",
			rep.NewKeyID, rep.Rewrapped, listOrNone(rep.Removed), listOrNone(rep.Kept))
	}
	return err
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// cmdDoctor prints `hearth doctor`'s checks; failed says whether any
// failed.
func cmdDoctor(ctx context.Context, args []string, out output) (failed bool, err error) {
	var c common
	fs := hostFlags("doctor", doctorUsage, &c, out)
	cfg, err := hostConfig(fs, &c, args, doctorUsage)
	if err != nil {
		return false, err
	}
	for _, ch := range app.Doctor(ctx, cfg) {
		fmt.Fprintf(out.stdout, "%-4s  %-18s %s\n", ch.Status, ch.Name, ch.Detail)
		if ch.Fix != "" {
			fmt.Fprintf(out.stdout, "      %-18s fix: %s\n", "", ch.Fix)
		}
		failed = failed || ch.Status == "FAIL"
	}
	return failed, nil
}
