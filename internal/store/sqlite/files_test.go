package sqlite

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// The database holds key hashes and sealed credentials: it and its WAL and
// shared-memory files are 0600 even under a permissive umask, and Open
// tightens files an earlier hearth left readable.
func TestDatabaseFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	path := filepath.Join(t.TempDir(), "hearth.db")
	db := openClosed(t, path)
	if err := db.CreateUser(t.Context(), store.User{ID: "u", Name: "u", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	files := []string{path, path + "-wal", path + "-shm"}
	checkModes := func(when string) {
		t.Helper()
		for _, f := range files {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("%s: %s has mode %04o, want 0600", when, filepath.Base(f), perm)
			}
		}
	}
	checkModes("new database")

	// Files left group- and world-readable are made private by the next Open.
	for _, f := range files {
		if err := os.Chmod(f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	openClosed(t, path)
	checkModes("reopened database")

	if _, err := Open(t.Context(), t.TempDir()); err == nil {
		t.Fatal("Open accepted a directory as the database file")
	}
}
