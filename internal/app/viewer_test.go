package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The viewer key is made once, private, and kept across restarts, so
// links handed out before a restart still work.
func TestViewerKeyPersists(t *testing.T) {
	dir := t.TempDir()
	k1, err := loadViewerKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, viewerKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	k2, err := loadViewerKey(dir)
	if err != nil || !bytes.Equal(k1, k2) || len(k1) != 32 {
		t.Fatalf("reloaded key differs or is short: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, viewerKeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadViewerKey(dir); err == nil || !strings.Contains(err.Error(), "need 32") {
		t.Fatalf("short key: %v", err)
	}
}
