package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/vault"
)

// checkVaultPlace warns when the vault's key file sits on the same file
// system as the database whose credentials it seals: one copy of that disk
// (a backup, a snapshot, a stolen image) then holds both the sealed
// credentials and the key that opens them, and the sealing protects nothing.
func checkVaultPlace(cfg config.Config) []Check {
	if os.Getenv(vault.EnvKey) != "" {
		return nil // the key is not on any disk hearth knows of
	}
	keyPath, dbPath := cfg.VaultKeyPath(), cfg.DatabasePath()
	keyDev, kerr := fsDevice(keyPath)
	dbDev, derr := fsDevice(dbPath)
	if err := errors.Join(kerr, derr); err != nil {
		return []Check{warn("vault key place", "cannot tell where the vault key and the database live: "+err.Error(),
			"run hearth serve once, then hearth doctor again")}
	}
	if keyDev != dbDev {
		return []Check{ok("vault key place", keyPath+" is on another file system than the database")}
	}
	return []Check{warn("vault key place",
		fmt.Sprintf("%s is on the same file system as the database %s it protects: a copy of that disk holds the sealed credentials and the key that opens them", keyPath, dbPath),
		"keep the master key off that disk: set "+vault.EnvKey+" from a secret store (and remove the key file), or set vault.key_file to a file on another mount (for example a tmpfs filled at boot, or separate encrypted media)")}
}

// fsDevice returns the device number of the file system that holds path,
// or that will hold it: a missing file is looked up through its directory.
func fsDevice(path string) (uint64, error) {
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		err := unix.Stat(p, &st)
		if err == nil {
			return st.Dev, nil
		}
		if !errors.Is(err, unix.ENOENT) || p == filepath.Dir(p) {
			return 0, fmt.Errorf("stat %s: %w", p, err)
		}
	}
}

// checkViewerKey checks the key viewer links are signed with: private to
// hearth, as the daemon requires before it starts.
func checkViewerKey(cfg config.Config) Check {
	path := filepath.Join(cfg.StateDir, viewerKeyFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return ok("viewer key", "none yet: hearth serve makes "+path+" (0600) on first start")
	}
	if err != nil {
		return failc("viewer key", err.Error(), "check "+path)
	}
	defer f.Close()
	if err := checkPrivate(f, path, "viewer key"); err != nil {
		return failc("viewer key", err.Error(), "chmod 600 "+path+" (or remove it: a new key is made at start, and open viewer links stop working)")
	}
	return ok("viewer key", path+" private")
}
