package diskspace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// smallFS mounts a tmpfs of size bytes (and inodes inodes) for the test.
func smallFS(t *testing.T, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small file system")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestCheckOnAFillingFileSystem(t *testing.T) {
	dir := smallFS(t, "size=8m")
	state := filepath.Join(dir, "state", "vms") // not made yet: its parent is measured
	if err := Check(state, 4<<20); err != nil {
		t.Fatalf("an empty 8 MiB file system with 4 MiB wanted free: %v", err)
	}
	u, err := Of(state)
	if err != nil || u.Path != dir || u.Total != 8<<20 {
		t.Fatalf("Of = %+v, %v", u, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fill"), make([]byte, 6<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	err = Check(state, 4<<20)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "low disk space: 2.0 MiB free under "+dir) ||
		!strings.Contains(errdefs.Public(err), "below the 4.0 MiB") {
		t.Fatalf("Check on a 6/8 MiB full file system: %v", err)
	}
	if err := Check(state, 0); err != nil {
		t.Fatalf("a check with no minimum: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "fill")); err != nil {
		t.Fatal(err)
	}
	if err := Check(state, 4<<20); err != nil {
		t.Fatalf("after freeing space: %v", err)
	}
}

func TestCheckCountsInodes(t *testing.T) {
	dir := smallFS(t, "size=8m,nr_inodes=1200")
	if err := Check(dir, 1); err != nil {
		t.Fatalf("fresh file system: %v", err)
	}
	for i := 0; i < 300; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := Check(dir, 1); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "inodes free") {
		t.Fatalf("with under %d inodes free: %v", MinFreeInodes, err)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 19: "1.5 MiB", 512 << 20: "512.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q; want %q", n, got, want)
		}
	}
}
