package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/config"
)

func find(checks []Check, name string) (Check, bool) {
	for _, c := range checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

func TestDoctorNamesProblemsWithFixes(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.QEMU.Binary = "qemu-system-does-not-exist"
	cfg.Listen = "0.0.0.0:7070"
	if err := os.Chmod(cfg.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	checks := Doctor(context.Background(), cfg)
	for _, c := range checks {
		if c.Status != "OK" && c.Status != "WARN" && c.Status != "FAIL" {
			t.Errorf("%s: status %q", c.Name, c.Status)
		}
		if c.Status != "OK" && c.Fix == "" {
			t.Errorf("%s is %s without a fix", c.Name, c.Status)
		}
	}
	if c, _ := find(checks, "qemu"); c.Status != "FAIL" || !strings.Contains(c.Fix, "apt-get install") {
		t.Errorf("missing qemu: %+v", c)
	}
	if c, _ := find(checks, "state dir"); c.Status != "WARN" || !strings.Contains(c.Fix, "chmod 0700") {
		t.Errorf("world-readable state dir: %+v", c)
	}
	if c, _ := find(checks, "listen"); c.Status != "WARN" {
		t.Errorf("non-loopback listen: %+v", c)
	}
	if c, _ := find(checks, "images"); c.Status != "WARN" || !strings.Contains(c.Fix, "hearth image build") {
		t.Errorf("no images: %+v", c)
	}
	if _, ok := find(checks, "copy-on-write"); !ok {
		t.Error("no copy-on-write check")
	}
}

func TestDoctorFirecracker(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.VM.Driver = "firecracker"
	cfg.Firecracker.Binary = "firecracker-does-not-exist"
	cfg.Firecracker.Jailer = config.JailerConfig{Binary: "jailer-does-not-exist", UID: 990, GID: 990}
	checks := Doctor(context.Background(), cfg)
	var fc []Check
	for _, c := range checks {
		if c.Name == "firecracker" {
			fc = append(fc, c)
		}
		if c.Status != "OK" && c.Fix == "" {
			t.Errorf("%s is %s without a fix", c.Name, c.Status)
		}
	}
	missing := false
	for _, c := range fc {
		missing = missing || (c.Status == "FAIL" && strings.Contains(c.Detail, "firecracker-does-not-exist"))
	}
	if !missing {
		t.Errorf("missing firecracker binary with the firecracker driver is not a failure: %+v", fc)
	}
	if c, _ := find(checks, "jailer"); c.Status != "FAIL" || !strings.Contains(c.Detail, "jailer-does-not-exist") {
		t.Errorf("missing jailer: %+v", c)
	}
	c, ok := find(checks, "disk cloning")
	if !ok || (!strings.Contains(c.Detail, "reflink") && !strings.Contains(c.Detail, "sparse copy")) {
		t.Errorf("disk cloning not reported: %+v", c)
	}
	// The QEMU driver's users are only warned.
	cfg.VM.Driver = "qemu"
	for _, c := range Doctor(context.Background(), cfg) {
		if (c.Name == "firecracker" || c.Name == "jailer") && c.Status == "FAIL" {
			t.Errorf("%s fails a host that runs the qemu driver: %+v", c.Name, c)
		}
	}
}

func TestDoctorFirecrackerGuestKernel(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.VM.Driver = "firecracker"
	if c, _ := find(Doctor(context.Background(), cfg), "guest kernel"); c.Status != "WARN" || !strings.Contains(c.Fix, "firecracker.kernel") {
		t.Errorf("no firecracker.kernel: %+v", c)
	}
	cfg.Firecracker.Kernel = "/nonexistent/vmlinux"
	if c, _ := find(Doctor(context.Background(), cfg), "guest kernel"); c.Status != "FAIL" || !strings.Contains(c.Detail, "/nonexistent/vmlinux") {
		t.Errorf("missing kernel: %+v", c)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, []byte("elf"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Firecracker.Kernel = kernel
	if c, _ := find(Doctor(context.Background(), cfg), "guest kernel"); c.Status != "OK" {
		t.Errorf("present kernel: %+v", c)
	}
}

// Free space below state_dir_min_free is a warning that says what it
// costs (not ready, no new VMs) and how to fix it.
func TestDoctorWarnsOfLowFreeSpace(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.StateDirMinFree = 1 << 60 // more than any disk has
	c, ok := find(Doctor(context.Background(), cfg), "free disk")
	if !ok || c.Status != "WARN" || !strings.Contains(c.Detail, "state_dir_min_free") ||
		!strings.Contains(c.Detail, "/readyz answers 503") || c.Fix == "" {
		t.Fatalf("free disk below the threshold: %+v", c)
	}
	cfg.StateDirMinFree = 1 << 10
	if c, _ := find(Doctor(context.Background(), cfg), "free disk"); strings.Contains(c.Detail, "state_dir_min_free") {
		t.Fatalf("free disk above the threshold: %+v", c)
	}
}
