package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/proc"
)

// startIdleQEMU daemonizes a QEMU that runs nothing (no machine, vCPUs
// stopped) named and with its pidfile as hearth starts VMs, and returns it.
func startIdleQEMU(t *testing.T, id, pidfile string) vmm.Process {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	if err := os.MkdirAll(filepath.Dir(pidfile), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-name", "hearth-"+id, "-M", "none", "-S", "-nodefaults", "-no-user-config",
		"-display", "none", "-daemonize", "-pidfile", pidfile).CombinedOutput()
	if err != nil {
		t.Fatalf("start qemu: %v: %s", err, out)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	start, err := proc.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	p := vmm.Process{PID: pid, Start: start}
	t.Cleanup(func() { _ = proc.KillWait(p.PID, p.Start, 10*time.Second) })
	return p
}

// TestFindProcesses: a QEMU started as hearth starts one is found from its
// command line alone, by its VM directory, and only under its VMs
// directory; KillProcess ends it.
func TestFindProcesses(t *testing.T) {
	d, err := New(Config{Accel: "tcg", TSCkHz: 1})
	if err != nil {
		t.Fatal(err)
	}
	vmsDir := filepath.Join(t.TempDir(), "vms")
	mine := startIdleQEMU(t, "vm-find1", filepath.Join(vmsDir, "vm-find1", filePID))
	other := startIdleQEMU(t, "vm-find2", filepath.Join(t.TempDir(), "vms", "vm-find2", filePID))

	found, err := d.FindProcesses(vmsDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := found["vm-find1"]; !slices.Equal(got, []vmm.Process{mine}) || len(found) != 1 {
		t.Fatalf("found %v, want only vm-find1: %v", found, mine)
	}
	if err := d.KillProcess(mine); err != nil {
		t.Fatal(err)
	}
	if proc.Alive(mine.PID, mine.Start) {
		t.Fatal("still alive after KillProcess")
	}
	if !proc.Alive(other.PID, other.Start) {
		t.Fatal("a QEMU under another VMs directory was touched")
	}
	if found, err := d.FindProcesses(vmsDir); err != nil || len(found) != 0 {
		t.Fatalf("after the kill: %v %v", found, err)
	}
}
