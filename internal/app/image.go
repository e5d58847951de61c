package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/build"
	"github.com/hearth-project/hearth/internal/image/verify"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func withStore(ctx context.Context, cfg config.Config, fn func(store.Store) error) error {
	if err := cfg.EnsureDirs(); err != nil {
		return err
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(st)
}

// defaultAgentPath finds hearth-agent next to the running binary.
func defaultAgentPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(exe), "hearth-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no hearth-agent next to %s: build it first (make build) or pass --agent", exe)
	}
	return p, nil
}

// BuildImage builds a profile (or finds it cached), verifies the result
// against its manifest and records it in the store with the verdict. Only
// a successful build is recorded, so a failed one leaves nothing behind.
func BuildImage(ctx context.Context, cfg config.Config, profile, agentPath, kernelPkg string, progress io.Writer) (store.Image, error) {
	if agentPath == "" {
		p, err := defaultAgentPath()
		if err != nil {
			return store.Image{}, err
		}
		agentPath = p
	}
	if err := cfg.EnsureDirs(); err != nil {
		return store.Image{}, err
	}
	res, err := build.Image(ctx, build.Options{
		Profile: profile, AgentBinary: agentPath, AgentVersion: Version,
		CacheDir: cfg.CacheDir, OutputDir: cfg.ImagesPath(), KernelPackage: kernelPkg, Log: progress,
	})
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
		img.Name = profile
	}
	err = withStore(ctx, cfg, func(st store.Store) error {
		if old, err := st.GetImage(ctx, res.Digest); err == nil && old.ID == res.Digest {
			img.CreatedAt = old.CreatedAt
		}
		summary := verifyInto(ctx, &img)
		if err := st.PutImage(ctx, img); err != nil {
			return fmt.Errorf("record image: %w", err)
		}
		state := "built"
		if res.Cached {
			state = "cached"
		}
		fmt.Fprintf(progress, "image %s %s: %s (%s, %s)\n", img.Name, short(res.Digest), res.Dir, state, img.Status)
		if img.Status != store.ImageVerified {
			fmt.Fprintln(progress, summary)
		}
		return nil
	})
	return img, err
}

// verifyInto checks the image file against its manifest and records the
// verdict on img. It returns a readable summary of what failed.
func verifyInto(ctx context.Context, img *store.Image) string {
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

func verifyCmd(ctx context.Context, st store.Store, ref string, stdout io.Writer) error {
	img, err := st.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	summary := verifyInto(ctx, &img)
	if err := st.PutImage(ctx, img); err != nil {
		return fmt.Errorf("record verdict: %w", err)
	}
	fmt.Fprintf(stdout, "image %s (%s): %s\n", img.Name, short(img.ID), img.Status)
	if img.Status != store.ImageVerified {
		fmt.Fprintln(stdout, summary)
		return fmt.Errorf("image %s failed verification", img.Name)
	}
	return nil
}

func listImages(ctx context.Context, st store.Store, stdout io.Writer) error {
	imgs, err := st.ListImages(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tROLE\tSTATUS\tSIZE\tCREATED")
	for _, im := range imgs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1fMiB\t%s\n", im.Name, short(im.ID), im.Role, im.Status,
			float64(im.SizeBytes)/(1<<20), im.CreatedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func inspectImage(ctx context.Context, st store.Store, ref string, stdout io.Writer) error {
	img, err := st.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	out := map[string]any{
		"id": img.ID, "name": img.Name, "role": img.Role, "status": img.Status, "size_bytes": img.SizeBytes,
		"created_at": img.CreatedAt, "kernel": img.KernelPath, "initrd": img.InitrdPath, "rootfs": img.RootfsPath,
		"manifest": json.RawMessage(orNull(img.Manifest)), "verification": json.RawMessage(orNull(img.VerifyReport)),
	}
	if !img.VerifiedAt.IsZero() {
		out["verified_at"] = img.VerifiedAt
	}
	return safetext.WriteJSON(stdout, out)
}

func orNull(b []byte) []byte {
	if len(b) == 0 {
		return []byte("null")
	}
	return b
}

// removeImage deletes an image unless a VM that is not destroyed uses it.
func removeImage(ctx context.Context, st store.Store, ref string, stdout io.Writer) error {
	img, err := st.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	vms, err := st.ListVMs(ctx, store.VMFilter{})
	if err != nil {
		return err
	}
	var users []string
	for _, v := range vms {
		if v.ImageID == img.ID {
			users = append(users, v.ID)
		}
	}
	if len(users) > 0 {
		return fmt.Errorf("image %s is in use by %s; delete those VMs first", img.Name, strings.Join(users, ", "))
	}
	if err := st.DeleteImage(ctx, img.ID); err != nil {
		return err
	}
	dir := filepath.Dir(img.RootfsPath)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	fmt.Fprintf(stdout, "removed image %s (%s)\n", img.Name, short(img.ID))
	return nil
}

// collectImages removes image directories the store does not know (left by
// removed images or another state dir's builds) and stale build leftovers.
func collectImages(ctx context.Context, cfg config.Config, st store.Store, stdout io.Writer) error {
	imgs, err := st.ListImages(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, im := range imgs {
		keep[filepath.Base(filepath.Dir(im.RootfsPath))] = true
	}
	entries, err := os.ReadDir(cfg.ImagesPath())
	if err != nil {
		return err
	}
	var freed int64
	for _, e := range entries {
		// Dotfiles are build locks and logs; a build may be running.
		if keep[e.Name()] || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(cfg.ImagesPath(), e.Name())
		freed += du(p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	// Unpacked kernels no registered image uses.
	used := map[string]bool{}
	for _, im := range imgs {
		var m image.Manifest
		if json.Unmarshal(im.Manifest, &m) == nil {
			used[m.Kernel.Package+"_"+m.Kernel.Version] = true
		}
	}
	kdir := filepath.Join(cfg.CacheDir, "kernels")
	kernels, _ := os.ReadDir(kdir)
	for _, e := range kernels {
		if !e.IsDir() || used[e.Name()] {
			continue
		}
		p := filepath.Join(kdir, e.Name())
		freed += du(p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		fmt.Fprintf(stdout, "removed unused kernel cache %s\n", p)
	}
	fmt.Fprintf(stdout, "freed %.1f MiB\n", float64(freed)/(1<<20))
	return nil
}

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
