package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
	"github.com/hearth-project/hearth/internal/vmm/vmmtest"
	"github.com/hearth-project/hearth/test/testrun"
)

// TestQEMUDriverConformance runs the driver conformance suite (vmm/vmmtest)
// against the QEMU driver, with real guests of the minimal image carrying
// this run's hearth-agent.
func TestQEMUDriverConformance(t *testing.T) {
	needRoot(t)
	img := minimalImage(t)
	khz, err := qemu.HostTSCkHz()
	if err != nil {
		t.Fatalf("host TSC frequency (TCG guests need it): %v", err)
	}
	// Short: the VM's Unix sockets live in its directory.
	vms, err := testrun.TempDir("vmt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if pids := qemuPIDs(vms); len(pids) > 0 {
			t.Errorf("qemu processes left behind: %v", pids)
		}
		_ = os.RemoveAll(vms)
	})
	vmmtest.Run(t, vmmtest.Harness{
		NewDriver: func(t *testing.T) vmm.Driver {
			d, err := qemu.New(qemu.Config{Accel: "auto", TSCkHz: khz})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(t *testing.T, id string) vmm.Spec {
			return vmm.Spec{
				ID: id, Dir: filepath.Join(vms, id), VCPUs: 1, MemoryMiB: 256,
				Kernel: filepath.Join(img, "vmlinux"), Initrd: filepath.Join(img, "initrd.img"),
				Rootfs: filepath.Join(img, "rootfs.ext4"),
			}
		},
		BootTimeout:   bootWait,
		ConsoleMarker: "hearth-agent",
	})
}

// builtImage is the line `hearth image build` ends with: profile, short
// digest, directory, and whether it was built or found.
var builtImage = regexp.MustCompile(`(?m)^image \S+ [0-9a-f]+: (.+) \((?:built|cached), verified\)$`)

// minimalImage builds the minimal image with this run's hearth-agent, or
// finds it in the shared e2e image cache, and returns its directory.
func minimalImage(t *testing.T) string {
	t.Helper()
	state, err := testrun.TempDir("img")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	d := &daemon{t: t, env: []string{"HEARTH_STATE_DIR=" + state, "HEARTH_IMAGE_DIR=" + imageDir,
		"HEARTH_CACHE_DIR=" + cacheDir, "HEARTH_CONFIG="}}
	start := time.Now()
	out := d.hearth("image", "build", "--local", "--profile", "minimal", "--agent", filepath.Join(binDir, "hearth-agent"))
	m := builtImage.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("cannot find the image directory in the output of hearth image build:\n%s", out)
	}
	t.Logf("image in %v: %s", time.Since(start).Round(time.Millisecond), lastLine(out))
	return m[1]
}
