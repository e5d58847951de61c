package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vault"
	"github.com/hearth-project/hearth/internal/vm"
)

// openVault opens the credential vault: the master key from
// HEARTH_VAULT_KEY, else the key file (made, with one fresh key, on first
// use when make is set).
func openVault(cfg config.Config, st store.Credentials, make bool, log *slog.Logger) (*vault.Vault, error) {
	path := cfg.VaultKeyPath()
	if os.Getenv(vault.EnvKey) == "" && make {
		// A missing key file next to stored credentials was lost, not
		// never made: a new key would silently orphan every record.
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			if cs, err := st.ListCredentials(context.Background(), ""); err != nil {
				return nil, err
			} else if len(cs) > 0 {
				return nil, fmt.Errorf("vault key file %s is missing but %d credentials are stored under it: restore it from a backup (or delete the credentials to start over)", path, len(cs))
			}
		}
		created, err := vault.EnsureKeyFile(path)
		if err != nil {
			return nil, err
		}
		if created && log != nil {
			log.Warn("made a new vault master key: back it up; without it no stored credential can be opened", "key_file", path)
		}
	}
	kr, err := vault.LoadKeyring(path, os.Environ())
	if err != nil {
		return nil, err
	}
	return vault.New(kr, st), nil
}

// loadProviders is the built-in providers plus the configured directory's.
func loadProviders(cfg config.Config) (*provider.Registry, error) {
	reg, err := provider.Load()
	if err != nil {
		return nil, err
	}
	if dir := cfg.Login.ProvidersDir; dir != "" {
		if err := reg.AddDir(dir); err != nil {
			return nil, fmt.Errorf("providers in %s: %w", dir, err)
		}
	}
	return reg, nil
}

func loginConfig(cfg config.Config) login.Config {
	l := cfg.Login
	return login.Config{
		BrowserImage: l.BrowserImage, VCPUs: l.VCPUs, MemoryMiB: l.MemoryMiB,
		BootTimeout: cfg.VM.BootTimeout.Duration, TTL: l.Timeout.Duration,
		GuestUser: l.GuestUser, WorkspaceUser: l.WorkspaceUser, WorkspaceRole: l.WorkspaceRole,
		Browser: l.Browser, SetupTimeout: l.SetupTimeout.Duration, PageCheck: l.PageCheck,
		CreateBurst: l.CreateBurst, CreateEvery: l.CreateEvery.Duration,
	}
}

// newLogins builds the login service.
func newLogins(cfg config.Config, st store.Store, mgr *vm.Manager, vlt *vault.Vault, viewers login.ViewerCloser, log *slog.Logger) (*login.Service, error) {
	reg, err := loadProviders(cfg)
	if err != nil {
		return nil, err
	}
	log.Info("providers", "names", strings.Join(reg.Names(), ","))
	return login.New(loginConfig(cfg), login.Deps{Store: st, VMs: mgr, Vault: vlt, Providers: reg, Viewers: viewers,
		Events: mgr.Bus(), Log: log.With("component", "login")}), nil
}

// cmdVault runs `hearth vault rotate`: a new master key, every credential
// re-wrapped under it, the old keys removed once unused.
func cmdVault(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 || args[0] != "rotate" {
		return errors.New("usage: hearth vault rotate")
	}
	fs := flag.NewFlagSet("vault rotate", flag.ContinueOnError)
	var c common
	c.register(fs)
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return err
	}
	defer st.Close()
	vlt, err := openVault(cfg, st, false, nil)
	if err != nil {
		return err
	}
	rep, err := vlt.Rotate(ctx)
	if rep.NewKeyID != "" {
		fmt.Fprintf(stdout, "new current key %s; %d credentials re-wrapped; removed keys: %s; kept: %s\n",
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

// cmdLogin runs `hearth login ...` against the daemon.
func cmdLogin(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 {
		return errors.New("usage: hearth login start PROVIDER | get ID | cancel ID | list | credentials")
	}
	sub := args[0]
	fs := flag.NewFlagSet("login "+sub, flag.ContinueOnError)
	var c common
	c.register(fs)
	user := fs.String("user", "", "the user (admin keys; default: the key's own)")
	wait := fs.Bool("wait", false, "start: print the viewer link once the sign-in page is open, then wait for the end")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	one := func() (string, error) { return onlyArg(pos, "usage: hearth login "+sub+" ID") }
	switch sub {
	case "start":
		name, err := onlyArg(pos, "usage: hearth login start PROVIDER")
		if err != nil {
			return err
		}
		l, err := cl.StartLogin(ctx, *user, name)
		if err != nil {
			return err
		}
		if !*wait {
			return printJSON(stdout, l)
		}
		return followLogin(ctx, cl, l.ID, stdout)
	case "get":
		id, err := one()
		if err != nil {
			return err
		}
		l, err := cl.GetLogin(ctx, id)
		if err != nil {
			return err
		}
		return printJSON(stdout, l)
	case "cancel":
		id, err := one()
		if err != nil {
			return err
		}
		l, err := cl.CancelLogin(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s\n", l.ID, l.State)
		return nil
	case "list":
		ls, err := cl.ListLogins(ctx, api.ListLoginsParams{})
		if err != nil {
			return err
		}
		return printJSON(stdout, ls)
	case "credentials":
		cs, err := cl.ListCredentials(ctx, *user)
		if err != nil {
			return err
		}
		return printJSON(stdout, cs)
	default:
		return fmt.Errorf("unknown login command %q", sub)
	}
}

// followLogin prints the viewer link when there is one, then waits for
// the login to end and says how.
func followLogin(ctx context.Context, cl *client.Client, id string, stdout io.Writer) error {
	shown := false
	for {
		l, err := cl.GetLogin(ctx, id)
		if err != nil {
			return err
		}
		if l.Viewer.URL != "" && !shown {
			fmt.Fprintf(stdout, "finish the sign-in here: %s\n", l.Viewer.URL)
			shown = true
		}
		if client.Terminal(l) {
			fmt.Fprintf(stdout, "%s %s %s\n", l.ID, l.State, safetext.Line(l.FailureReason, 0))
			if l.State != api.LoginStateCompleted {
				return fmt.Errorf("login %s", l.State)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
