package app

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/vault"
)

// viewer.key is refused like vault.key when group or others may access it,
// and the error says how to fix it; the doctor reports the same.
func TestViewerKeyModeChecked(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadViewerKey(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, viewerKeyFile)
	cfg := config.Default()
	cfg.StateDir = dir
	if c := checkViewerKey(cfg); c.Status != "OK" {
		t.Errorf("private key: doctor says %+v", c)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o601, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := loadViewerKey(dir)
		if err == nil {
			t.Fatalf("loaded a viewer key with mode %04o", mode)
		}
		if !strings.Contains(err.Error(), "group and others must have no access") || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Fatalf("mode %04o: error %q does not say why and how to fix it", mode, err)
		}
		if c := checkViewerKey(cfg); c.Status != "FAIL" || !strings.Contains(c.Fix, "chmod 600 "+path) {
			t.Errorf("mode %04o: doctor says %+v", mode, c)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := loadViewerKey(dir); err != nil {
		t.Fatalf("read-only for its owner: %v", err)
	}
	other := t.TempDir()
	if err := os.Mkdir(filepath.Join(other, viewerKeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := loadViewerKey(other); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory as viewer key: %v", err)
	}
}

// The doctor warns when vault.key lies on the same file system as the
// database it protects, and says what to do; not when the key is elsewhere.
func TestDoctorVaultKeyOnTheDatabaseDisk(t *testing.T) {
	t.Setenv(vault.EnvKey, "")
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	if err := cfg.EnsureDirs(); err != nil {
		t.Fatal(err)
	}
	if _, err := vault.EnsureKeyFile(cfg.VaultKeyPath()); err != nil {
		t.Fatal(err)
	}
	c, found := find(Doctor(context.Background(), cfg), "vault key place")
	if !found || c.Status != "WARN" || !strings.Contains(c.Detail, "same file system") ||
		!strings.Contains(c.Fix, vault.EnvKey) || !strings.Contains(c.Fix, "another mount") {
		t.Fatalf("key next to the database: %+v", c)
	}
	// Before the first start neither file exists: where they will be counts.
	fresh := config.Default()
	fresh.StateDir = filepath.Join(t.TempDir(), "not-yet")
	if c, _ := find(Doctor(context.Background(), fresh), "vault key place"); c.Status != "WARN" {
		t.Fatalf("before the first start: %+v", c)
	}

	// A key from the environment is on no disk.
	t.Setenv(vault.EnvKey, base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if c, found := find(Doctor(context.Background(), cfg), "vault key place"); found {
		t.Fatalf("key from %s: %+v", vault.EnvKey, c)
	}
	t.Setenv(vault.EnvKey, "")

	// A key on another file system (/dev/shm is a tmpfs).
	var a, b unix.Stat_t
	if unix.Stat(cfg.StateDir, &a) != nil || unix.Stat("/dev/shm", &b) != nil || a.Dev == b.Dev {
		t.Skip("no second file system (/dev/shm) to put the key on")
	}
	shm, err := os.MkdirTemp("/dev/shm", "hearth-doctor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	cfg.Vault.KeyFile = filepath.Join(shm, "vault.key")
	if _, err := vault.EnsureKeyFile(cfg.Vault.KeyFile); err != nil {
		t.Fatal(err)
	}
	if c, _ := find(Doctor(context.Background(), cfg), "vault key place"); c.Status != "OK" {
		t.Fatalf("key on another file system: %+v", c)
	}
}
