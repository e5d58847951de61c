// Package imagereg keeps the store's image records true to the image
// files: it builds an image (package image/build) and registers it with
// the verifier's verdict (package image/verify), verifies registered
// images again, removes them unless a VM uses them, and collects the files
// no record names. The CLI working on a host's store directly, the
// daemon's build jobs (internal/imagebuild) and the API's image routes
// all go through it, so an image is registered, verified and removed one
// way whoever asks.
package imagereg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/build"
	"github.com/hearth-project/hearth/internal/image/verify"
	"github.com/hearth-project/hearth/internal/store"
)

// Registry is the images of one store and the directories their files
// live in.
type Registry struct {
	Store store.Store
	// ImageDir holds the built images, one directory each.
	ImageDir string
	// CacheDir holds the builder's downloads, unpacked kernels and
	// debootstrap trees.
	CacheDir string
}

// Short is the prefix of an image id people read (12 characters).
func Short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Build builds the image o describes (or finds it built), verifies it
// against its manifest and records it in the store with the verdict.
// Only a build that produced an image is recorded, so a failed or
// cancelled one leaves nothing behind (the builder removes its work
// directory); an image that fails verification is recorded as failed (no
// VM starts from it) and returned without an error, with the verifier's
// summary written to progress. o's OutputDir and CacheDir are the
// registry's.
func (r *Registry) Build(ctx context.Context, o build.Options, progress io.Writer) (store.Image, error) {
	if progress == nil {
		progress = io.Discard
	}
	o.OutputDir, o.CacheDir, o.Log = r.ImageDir, r.CacheDir, progress
	res, err := build.Image(ctx, o)
	if err != nil {
		return store.Image{}, err
	}
	manifest, err := json.Marshal(res.Manifest)
	if err != nil {
		return store.Image{}, fmt.Errorf("encode manifest: %w", err)
	}
	img := store.Image{
		ID: res.Digest, Name: res.Manifest.Profile, Role: res.Manifest.Role,
		KernelPath: res.KernelPath, InitrdPath: res.InitrdPath, RootfsPath: res.RootfsPath,
		Manifest: manifest, SizeBytes: res.Manifest.Rootfs.DiskSize + res.Manifest.Kernel.Size + res.Manifest.Initrd.Size,
		CreatedAt: time.Now().UTC(),
	}
	if img.Name == "" {
		img.Name = o.Profile
	}
	if old, err := r.Store.GetImage(ctx, res.Digest); err == nil && old.ID == res.Digest {
		img.CreatedAt = old.CreatedAt
	}
	summary := VerifyInto(ctx, &img)
	// A build cancelled while its image was verified registers nothing:
	// the verdict would be the cancellation's, not the image's. Its files
	// are complete; the next build of it finds them.
	if ctx.Err() != nil {
		return store.Image{}, fmt.Errorf("cancelled before the image was registered: %w", context.Cause(ctx))
	}
	if err := r.Store.PutImage(ctx, img); err != nil {
		return store.Image{}, fmt.Errorf("record image: %w", err)
	}
	state := "built"
	if res.Cached {
		state = "cached"
	}
	fmt.Fprintf(progress, "image %s %s: %s (%s, %s)\n", img.Name, Short(res.Digest), res.Dir, state, img.Status)
	if img.Status != store.ImageVerified {
		fmt.Fprintln(progress, summary)
	}
	return img, nil
}

// VerifyInto checks the image's files against its manifest and records
// the verdict on img (status, time, report). It returns a readable
// summary of what failed ("" when verified).
func VerifyInto(ctx context.Context, img *store.Image) string {
	img.VerifiedAt = time.Now().UTC()
	var m image.Manifest
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		img.Status = store.ImageFailed
		img.VerifyReport, _ = json.Marshal(map[string]string{"error": "manifest unreadable: " + err.Error()})
		return "manifest unreadable: " + err.Error()
	}
	dir := filepath.Dir(img.RootfsPath)
	rep, err := verify.Image(ctx, dir, &m)
	if err != nil {
		img.Status = store.ImageFailed
		img.VerifyReport, _ = json.Marshal(map[string]string{"error": err.Error()})
		return "could not verify: " + err.Error()
	}
	img.VerifyReport, _ = json.Marshal(rep)
	if rep.OK {
		img.Status = store.ImageVerified
		return ""
	}
	img.Status = store.ImageFailed
	return rep.String()
}

// Get returns the image ref names (an id, a unique id prefix of at least
// 8 characters, or a name: the newest image with it).
func (r *Registry) Get(ctx context.Context, ref string) (store.Image, error) {
	img, err := r.Store.GetImage(ctx, ref)
	if errors.Is(err, store.ErrNotFound) {
		return store.Image{}, errdefs.NotFoundf("image %s not found", ref)
	}
	return img, err
}

// Verify checks a registered image's files against its manifest again
// and records the verdict. A failed verification is the image's status,
// not an error; the summary says what failed.
func (r *Registry) Verify(ctx context.Context, ref string) (store.Image, string, error) {
	img, err := r.Get(ctx, ref)
	if err != nil {
		return store.Image{}, "", err
	}
	summary := VerifyInto(ctx, &img)
	if err := r.Store.PutImage(ctx, img); err != nil {
		return store.Image{}, "", fmt.Errorf("record verdict: %w", err)
	}
	return img, summary, nil
}

// Remove deletes an image's record and its directory, unless a VM that is
// not destroyed uses it (a conflict naming those VMs).
func (r *Registry) Remove(ctx context.Context, ref string) (store.Image, error) {
	img, err := r.Get(ctx, ref)
	if err != nil {
		return store.Image{}, err
	}
	vms, err := r.Store.ListVMs(ctx, store.VMFilter{})
	if err != nil {
		return store.Image{}, err
	}
	var users []string
	for _, v := range vms {
		if v.ImageID == img.ID {
			users = append(users, v.ID)
		}
	}
	if len(users) > 0 {
		return store.Image{}, errdefs.Conflictf("image %s (%s) is in use by %s; delete those VMs first", img.Name, Short(img.ID), strings.Join(users, ", "))
	}
	if err := r.Store.DeleteImage(ctx, img.ID); err != nil {
		return store.Image{}, err
	}
	dir := filepath.Dir(img.RootfsPath)
	if err := os.RemoveAll(dir); err != nil {
		return img, fmt.Errorf("remove %s: %w", dir, err)
	}
	return img, nil
}

// Collected is what Collect removed.
type Collected struct {
	// Images are image directories no record names.
	Images []string
	// Kernels are unpacked kernels in the cache no registered image uses.
	Kernels []string
	// FreedBytes is the size of the regular files removed.
	FreedBytes int64
}

// Collect removes the image directories the store does not know (left by
// removed images or another state dir's builds) and the unpacked kernels
// no registered image uses. Dotfiles in the image directory (build locks,
// logs, a build's work directory) are left alone; a build running
// meanwhile may still lose its kernel, so callers that run builds
// themselves collect only while none runs (imagebuild.Service.Exclusive).
func (r *Registry) Collect(ctx context.Context) (Collected, error) {
	var out Collected
	imgs, err := r.Store.ListImages(ctx)
	if err != nil {
		return out, err
	}
	keep := map[string]bool{}
	used := map[string]bool{}
	for _, im := range imgs {
		keep[filepath.Base(filepath.Dir(im.RootfsPath))] = true
		var m image.Manifest
		if json.Unmarshal(im.Manifest, &m) == nil {
			used[m.Kernel.Package+"_"+m.Kernel.Version] = true
		}
	}
	entries, err := os.ReadDir(r.ImageDir)
	if err != nil {
		return out, err
	}
	for _, e := range entries {
		if keep[e.Name()] || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(r.ImageDir, e.Name())
		n := du(p)
		if err := os.RemoveAll(p); err != nil {
			return out, fmt.Errorf("remove %s: %w", p, err)
		}
		out.Images = append(out.Images, p)
		out.FreedBytes += n
	}
	kdir := filepath.Join(r.CacheDir, "kernels")
	kernels, _ := os.ReadDir(kdir) // no kernel cache: nothing to collect
	for _, e := range kernels {
		if !e.IsDir() || used[e.Name()] {
			continue
		}
		p := filepath.Join(kdir, e.Name())
		n := du(p)
		if err := os.RemoveAll(p); err != nil {
			return out, fmt.Errorf("remove %s: %w", p, err)
		}
		out.Kernels = append(out.Kernels, p)
		out.FreedBytes += n
	}
	return out, nil
}

// du is the size of the regular files under path.
func du(path string) int64 {
	var n int64
	_ = filepath.Walk(path, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}
