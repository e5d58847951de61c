package app

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// The vault key file is made on first start, and a lost one is not
// silently replaced while credentials sealed under it are stored.
func TestOpenVaultKeyFile(t *testing.T) {
	t.Setenv("HEARTH_VAULT_KEY", "")
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateUser(ctx, store.User{ID: "alice", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	v, err := openVault(cfg, st, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfg.VaultKeyPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if _, err := v.Put(ctx, store.Credential{ID: "crd_1", UserID: "alice", Provider: "codex", Valid: true}, []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := openVault(cfg, st, true, nil); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := os.Remove(cfg.VaultKeyPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := openVault(cfg, st, true, nil); err == nil || !strings.Contains(err.Error(), "missing but 1 credentials") {
		t.Fatalf("lost key file: %v", err)
	}
	if _, err := os.Stat(cfg.VaultKeyPath()); !os.IsNotExist(err) {
		t.Fatal("a new key file was made over the lost one")
	}
}
