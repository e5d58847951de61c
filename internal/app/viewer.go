package app

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/terminal"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/web"
)

// viewerKeyFile holds the key viewer links are signed with. It is kept
// across restarts so that links handed out stay valid.
const viewerKeyFile = "viewer.key"

// loadViewerKey reads the signing key, creating a random one (0600) on
// first start. Like the vault's key file, it refuses a key that group or
// others may read: anyone who can read it can mint viewer links.
func loadViewerKey(stateDir string) ([]byte, error) {
	path := filepath.Join(stateDir, viewerKeyFile)
	key, err := readPrivateFile(path, "viewer key")
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("make viewer key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create viewer key: %w", err)
		}
		_, werr := f.Write(key)
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			_ = os.Remove(path)
			return nil, fmt.Errorf("write viewer key %s: %w", path, err)
		}
		return key, nil
	}
	if err != nil {
		return nil, err
	}
	if len(key) < viewer.MinKeySize {
		return nil, fmt.Errorf("viewer key %s is %d bytes, need %d (remove it to make a new one; open viewer links stop working)", path, len(key), viewer.MinKeySize)
	}
	return key, nil
}

// readPrivateFile reads the file at path, refusing it unless it is a
// regular file that only its owner may access. what names it in errors.
func readPrivateFile(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	if err := checkPrivate(f, path, what); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, maxKeyFile)
	}
	return b, nil
}

// maxKeyFile bounds what readPrivateFile reads.
const maxKeyFile = 64 << 10

// checkPrivate refuses an open file that is not a regular file or that
// group or others may access, saying how to fix it.
func checkPrivate(f *os.File, path, what string) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s %s has mode %04o: group and others must have no access to it (chmod 600 %s)", what, path, perm, path)
	}
	return nil
}

// newViewers builds the viewer service, keeping viewer epochs in epochs
// (the store); mgr is read when a viewer connects, after the manager
// exists.
func newViewers(cfg config.Config, epochs viewer.Epochs, mgr **vm.Manager, log *slog.Logger) (*viewer.Service, error) {
	key, err := loadViewerKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	signer, err := viewer.NewSigner(key)
	if err != nil {
		return nil, err
	}
	port := cfg.Viewer.VNCPort
	return viewer.NewService(linkConfig(cfg), signer, epochs, func(ctx context.Context, id string) (string, error) {
		return (*mgr).GuestAddr(ctx, id, port)
	}, log.With("component", "viewer")), nil
}

// newTerminals builds the terminal service: its links are signed with a
// key derived from the viewer key, follow the viewer's rules and share
// the VMs' viewer epochs (revoking a VM's viewer links revokes its
// terminal links too); mgr is read when a terminal connects.
func newTerminals(cfg config.Config, epochs viewer.Epochs, mgr **vm.Manager, log *slog.Logger) (*terminal.Service, error) {
	key, err := loadViewerKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	signer, err := viewer.NewSigner(terminal.LinkKey(key))
	if err != nil {
		return nil, err
	}
	lc := linkConfig(cfg)
	lc.IdleTimeout = 0 // a shell may sit quiet for hours; its link bounds it
	log = log.With("component", "terminal")
	links := viewer.NewService(lc, signer, epochs, func(context.Context, string) (string, error) {
		return "", errors.New("terminal links reach no vnc server")
	}, log)
	t := cfg.Terminal
	return terminal.NewService(terminal.Config{
		Linger:    t.Linger.Duration,
		KillGrace: t.KillGrace.Duration,
		Bridge: terminal.Options{
			PingInterval: cfg.Viewer.PingInterval.Duration,
			WriteTimeout: t.WriteTimeout.Duration,
			ControlRate:  t.ControlRate,
		},
	}, links, func(ctx context.Context, id string) (*workapi.Client, error) {
		return (*mgr).Work(ctx, id)
	}, log), nil
}

// terminalOptions are the API's terminal settings from the configuration.
func terminalOptions(cfg config.Config) api.TerminalOptions {
	return api.TerminalOptions{TTL: cfg.Terminal.TokenTTL.Duration, Assets: web.Assets(), AssetsErr: web.XtermBuilt()}
}

// linkConfig is the viewer service's configuration for browser links.
func linkConfig(cfg config.Config) viewer.Config {
	return viewer.Config{
		PingInterval:     cfg.Viewer.PingInterval.Duration,
		IdleTimeout:      cfg.Viewer.IdleTimeout.Duration,
		MaxLifetime:      cfg.Viewer.MaxLifetime.Duration,
		SocketTTL:        cfg.Viewer.SocketTokenTTL.Duration,
		MaxPerLink:       cfg.Viewer.MaxViewersPerLink,
		MaxPerVM:         cfg.Viewer.MaxViewersPerVM,
		TicketsPerLink:   cfg.Viewer.TicketRatePerLink,
		TicketsPerClient: cfg.Viewer.TicketRatePerClient,
	}
}

// viewerOptions are the API's viewer settings from the configuration.
func viewerOptions(cfg config.Config) api.ViewerOptions {
	o := api.ViewerOptions{
		TrustForwarded: cfg.Viewer.TrustForwardedHeaders,
		DefaultTTL:     cfg.Viewer.TokenTTL.Duration,
		MaxTTL:         cfg.Viewer.MaxTokenTTL.Duration,
		VNCPort:        cfg.Viewer.VNCPort,
		FrameAncestors: cfg.Viewer.FrameAncestors,
		Assets:         web.Assets(),
		AssetsErr:      web.NoVNCBuilt(),
	}
	if cfg.Viewer.PublicURL != "" {
		o.PublicURL, _ = url.Parse(cfg.Viewer.PublicURL) // validated by config.Validate
	}
	return o
}
