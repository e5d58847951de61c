package imagereg_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/imagereg"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// registry is a Registry on a fresh SQLite store, with its directories
// under a test directory.
func registry(t *testing.T) *imagereg.Registry {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "hearth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &imagereg.Registry{Store: st, ImageDir: filepath.Join(dir, "images"), CacheDir: filepath.Join(dir, "cache")}
	for _, d := range []string{r.ImageDir, filepath.Join(r.CacheDir, "kernels")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// put registers an image whose files are a directory of the registry
// holding a rootfs of size bytes, built with the kernel package kpkg.
func put(t *testing.T, r *imagereg.Registry, id, name, kpkg string, size int) store.Image {
	t.Helper()
	dir := filepath.Join(r.ImageDir, name+"-"+id[:16])
	write(t, filepath.Join(dir, image.RootfsFile), size)
	m, _ := json.Marshal(image.Manifest{Profile: name, Kernel: image.KernelManifest{Package: kpkg, Version: "1"}})
	img := store.Image{ID: id, Name: name, Role: name, KernelPath: filepath.Join(dir, image.KernelFile),
		InitrdPath: filepath.Join(dir, image.InitrdFile), RootfsPath: filepath.Join(dir, image.RootfsFile),
		Manifest: m, CreatedAt: time.Now().UTC(), Status: store.ImageVerified}
	if err := r.Store.PutImage(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	return img
}

func write(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// An image a VM uses is kept, with a conflict naming the VM; once the VM
// is destroyed the record and the directory go.
func TestRemoveRefusesImagesInUse(t *testing.T) {
	r := registry(t)
	ctx := context.Background()
	img := put(t, r, strings.Repeat("ab", 32), "minimal", "linux-image-x", 10)
	if err := r.Store.CreateUser(ctx, store.User{ID: "alice", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	vm := store.VM{ID: "vm-1", UserID: "alice", ImageID: img.ID, Role: "minimal", VCPUs: 1, MemoryMiB: 64, Driver: "qemu",
		State: store.StateReady, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := r.Store.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	_, err := r.Remove(ctx, "minimal")
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(errdefs.Public(err), "vm-1") {
		t.Fatalf("remove of an image in use: %v", err)
	}
	if !exists(img.RootfsPath) {
		t.Fatal("a refused remove deleted the image's files")
	}
	if _, _, err := r.Store.UpdateVM(ctx, "vm-1", "", func(v *store.VM) error { v.State = store.StateDestroyed; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := r.Remove(ctx, img.ID[:8])
	if err != nil || got.ID != img.ID {
		t.Fatalf("remove: %+v %v", got, err)
	}
	if exists(filepath.Dir(img.RootfsPath)) {
		t.Fatal("the image's directory is still there")
	}
	if _, err := r.Get(ctx, img.ID); !errors.Is(err, errdefs.ErrNotFound) || errdefs.Public(err) == "" {
		t.Fatalf("removed image: %v", err)
	}
	if _, err := r.Remove(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(errdefs.Public(err), "nope") {
		t.Fatalf("remove of an unknown image: %v", err)
	}
}

// Verify records the verifier's verdict: an image whose files are gone
// fails, and the store says so.
func TestVerifyRecordsTheVerdict(t *testing.T) {
	r := registry(t)
	ctx := context.Background()
	img := put(t, r, strings.Repeat("cd", 32), "minimal", "linux-image-x", 10)
	if err := os.RemoveAll(filepath.Dir(img.RootfsPath)); err != nil {
		t.Fatal(err)
	}
	got, summary, err := r.Verify(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != store.ImageFailed || summary == "" || len(got.VerifyReport) == 0 {
		t.Fatalf("verify of an image without files: %s %q %s", got.Status, summary, got.VerifyReport)
	}
	stored, err := r.Get(ctx, img.ID)
	if err != nil || stored.Status != store.ImageFailed || stored.VerifiedAt.IsZero() {
		t.Fatalf("stored verdict: %+v %v", stored, err)
	}
}

// Collect removes what no record names: image directories and unpacked
// kernels; it leaves registered images, their kernels and dotfiles (a
// build's lock, log or work directory).
func TestCollectRemovesWhatNoRecordNames(t *testing.T) {
	r := registry(t)
	ctx := context.Background()
	img := put(t, r, strings.Repeat("ef", 32), "minimal", "linux-image-used", 10)
	orphan := filepath.Join(r.ImageDir, "minimal-0000000000000000")
	write(t, filepath.Join(orphan, image.RootfsFile), 1000)
	work := filepath.Join(r.ImageDir, ".minimal-1111111111111111.tmp-1")
	write(t, filepath.Join(work, image.RootfsFile), 10)
	usedKernel := filepath.Join(r.CacheDir, "kernels", "linux-image-used_1")
	oldKernel := filepath.Join(r.CacheDir, "kernels", "linux-image-old_1")
	write(t, filepath.Join(usedKernel, "vmlinux"), 10)
	write(t, filepath.Join(oldKernel, "vmlinux"), 500)

	c, err := r.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Images, []string{orphan}) || !slices.Equal(c.Kernels, []string{oldKernel}) || c.FreedBytes != 1500 {
		t.Fatalf("collected %+v", c)
	}
	for _, p := range []string{img.RootfsPath, work, usedKernel} {
		if !exists(p) {
			t.Errorf("%s was collected", p)
		}
	}
	for _, p := range []string{orphan, oldKernel} {
		if exists(p) {
			t.Errorf("%s is still there", p)
		}
	}
}
