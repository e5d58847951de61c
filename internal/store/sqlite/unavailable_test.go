package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// holdConn opens a connection of its own to the database at path, as
// another process would, outside the store.
func holdConn(t *testing.T, path string) *sql.Conn {
	t.Helper()
	c, err := rawDB(t, path).Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantUnavailable(t *testing.T, what string, err error, msg string) {
	t.Helper()
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("%s: want an unavailable error, got %v", what, err)
	}
	if got := errdefs.Public(err); got != msg {
		t.Fatalf("%s: public message %q, want %q (err %v)", what, got, msg, err)
	}
	if !isBusy(err) && msg == errBusy.Error() {
		t.Fatalf("%s: the driver's error is lost: %v", what, err)
	}
}

func TestBusyDatabaseIsUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	db := openTemp(t, path)
	ctx := context.Background()
	now := time.Now().UTC()
	if err := db.CreateUser(ctx, store.User{ID: "u-1", Name: "one", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}

	// Another writer holds the write lock past the busy timeout.
	other := holdConn(t, path)
	if _, err := other.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	err := db.CreateUser(ctx, store.User{ID: "u-2", Name: "two", CreatedAt: now})
	wantUnavailable(t, "write under another writer", err, errBusy.Error())
	// WAL readers are not blocked by a writer.
	if _, err := db.GetUser(ctx, "u-1"); err != nil {
		t.Fatalf("read under another writer: %v", err)
	}
	if _, err := other.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}

	// Once the other connection lets go, the store works again.
	if err := db.CreateUser(ctx, store.User{ID: "u-2", Name: "two", CreatedAt: now}); err != nil {
		t.Fatalf("after the lock is released: %v", err)
	}
	// Errors that are not the database's state keep their class.
	if err := db.CreateUser(ctx, store.User{ID: "u-2", Name: "two", CreatedAt: now}); !errors.Is(err, store.ErrConflict) || errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("duplicate user: %v", err)
	}
}

// smallFS mounts a tmpfs of size bytes at a new directory (root only).
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return
		}
	}
}

func TestFullDiskIsUnavailable(t *testing.T) {
	dir := smallFS(t, 4<<20)
	db := openTemp(t, filepath.Join(dir, "hearth.db"))
	ctx := context.Background()
	now := time.Now().UTC()
	if err := db.CreateUser(ctx, store.User{ID: "u-0", Name: "zero", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	fill(t, dir)
	// The WAL may still have room for a few transactions: write until
	// the disk says no.
	var err error
	name := strings.Repeat("n", 8<<10)
	for i := 1; i <= 1000 && err == nil; i++ {
		err = db.CreateUser(ctx, store.User{ID: fmt.Sprintf("u-%d", i), Name: name, CreatedAt: now})
	}
	wantUnavailable(t, "write to a full disk", err, errFull.Error())
	// Reads still answer.
	if _, err := db.GetUser(ctx, "u-0"); err != nil {
		t.Fatalf("read from a full disk: %v", err)
	}
	// Room again: writes work again.
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateUser(ctx, store.User{ID: "u-after", Name: "after", CreatedAt: now}); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
}
