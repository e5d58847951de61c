package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/provider"
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

// RotateVault makes a new vault master key current and re-wraps every
// stored credential under it, removing the old keys once no record uses
// them. It works on the key file and the database directly, so it runs
// on this host with or without the daemon (the key file's lock keeps the
// two apart).
func RotateVault(ctx context.Context, cfg config.Config) (vault.RotateReport, error) {
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return vault.RotateReport{}, err
	}
	defer st.Close()
	vlt, err := openVault(cfg, st, false, nil)
	if err != nil {
		return vault.RotateReport{}, err
	}
	return vlt.Rotate(ctx)
}
