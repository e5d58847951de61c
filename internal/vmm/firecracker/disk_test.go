package firecracker

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// writeSparseImage makes a 64 MiB file with data at its start, middle and
// end and holes between.
func writeSparseImage(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 20 << 20, size - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(off>>20) | 1}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestSparseCopyKeepsContentAndHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "base.ext4"), filepath.Join(dir, "vm.ext4")
	want := writeSparseImage(t, src)
	if err := CloneDisk(CloneSparse, src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("sparse copy differs from its source")
	}
	if a := allocated(t, dst); a > 1<<20 {
		t.Fatalf("sparse copy of 12 KiB of data allocates %d bytes: holes were filled", a)
	}
	if _, err := os.Stat(dst + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	// The clone is private: writing it leaves the image alone.
	if err := os.WriteFile(dst, []byte("guest wrote this"), 0o600); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(src); !bytes.Equal(again, want) {
		t.Fatal("writing the clone changed the image")
	}
}

func TestCloneRefusesUnknownMethodAndMissingSource(t *testing.T) {
	dir := t.TempDir()
	if err := CloneDisk("full-copy", filepath.Join(dir, "x"), filepath.Join(dir, "y")); err == nil {
		t.Fatal("unknown method accepted")
	}
	if err := CloneDisk(CloneSparse, filepath.Join(dir, "missing"), filepath.Join(dir, "y")); err == nil {
		t.Fatal("missing source accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "y")); !os.IsNotExist(err) {
		t.Fatal("a failed clone left a disk behind")
	}
}

// TestReflinkOnBtrfs mounts a small btrfs file system from a loop device
// (root and btrfs-progs needed) and checks that the probe picks reflink
// there and that a reflinked clone takes no space of its own.
func TestReflinkOnBtrfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount a btrfs file system")
	}
	mkfs, err := exec.LookPath("mkfs.btrfs")
	if err != nil {
		t.Skip("mkfs.btrfs not installed (scripts/host-deps.sh --test installs btrfs-progs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	_ = f.Truncate(256 << 20)
	f.Close()
	if out, err := exec.Command(mkfs, "-q", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount btrfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	method, err := ProbeClone(filepath.Join(mnt, "vms"))
	if err != nil || method != CloneReflink {
		t.Fatalf("probe on btrfs: %q %v, want reflink", method, err)
	}
	src := filepath.Join(mnt, "base.ext4")
	big := bytes.Repeat([]byte("hearth-image-"), 8<<20/13)
	if err := os.WriteFile(src, big, 0o644); err != nil {
		t.Fatal(err)
	}
	syncFS(t, mnt)
	before := usedBytes(t, mnt)
	for i := range 5 {
		if err := CloneDisk(CloneReflink, src, filepath.Join(mnt, "vm"+string(rune('a'+i))+".ext4")); err != nil {
			t.Fatal(err)
		}
	}
	syncFS(t, mnt)
	if grew := usedBytes(t, mnt) - before; grew > 2<<20 {
		t.Fatalf("5 reflinked clones of an 8 MiB image used %d more bytes", grew)
	}
	got, _ := os.ReadFile(filepath.Join(mnt, "vmc.ext4"))
	if !bytes.Equal(got, big) {
		t.Fatal("reflinked clone differs from its source")
	}
}

func syncFS(t *testing.T, dir string) {
	t.Helper()
	if out, err := exec.Command("sync", "-f", dir).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v: %s", err, out)
	}
}

func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}
