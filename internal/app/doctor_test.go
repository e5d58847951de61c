package app

import (
	"context"
	"os"
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
