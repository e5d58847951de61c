package vmfake_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/hearth-project/hearth/internal/vm/vmfake"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/vmmtest"
)

// TestDriverConformance holds the fake driver to the driver contract: the
// part of the conformance suite that needs no guest, on one host whose
// processes each new driver instance (a restarted daemon) adopts through
// their handles alone. What it skips are the fake's deliberate
// differences from a real driver (see the package comment).
func TestDriverConformance(t *testing.T) {
	host := vmfake.NewHost()
	vmmtest.RunContract(t, vmmtest.Harness{
		NewDriver: func(*testing.T) vmm.Driver { return host.NewDriver() },
		Spec: func(t *testing.T, id string) vmm.Spec {
			// Image paths as the lifecycle tests give them: naming no file.
			return vmm.Spec{Dir: filepath.Join(t.TempDir(), id), VCPUs: 1, MemoryMiB: 128,
				Kernel: "/k", Initrd: "/i", Rootfs: "/r"}
		},
		ConsoleMarker: "fake init",
		Kill: func(h vmm.Handle) error {
			host.NewDriver().Kill(h.PID)
			return nil
		},
		WriteConsole: func(h vmm.Handle, b []byte) { host.NewDriver().WriteConsole(h, b) },
		Skip: map[string]string{
			"token_not_on_process_cmdline": "the fake's processes are not the machine's: none has a command line in /proc",
			"missing_rootfs": "the fake reads no image: the lifecycle, API and login tests give it " +
				"image records whose paths name no files",
			"missing_kernel": "the fake boots no kernel: the lifecycle, API and login tests give it " +
				"image records whose paths name no files",
		},
	})
}

// TestNoDataChannel: the fake's VMs have no data channel, and say so as a
// VM of an older hearth does.
func TestNoDataChannel(t *testing.T) {
	d := vmfake.NewHost().NewDriver()
	spec := vmm.Spec{ID: "vm-1", Dir: filepath.Join(t.TempDir(), "vm-1"), VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i", Rootfs: "/r"}
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context(), spec, &h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(context.Background(), h, 0) })
	if _, err := vmm.DialData(t.Context(), h); !errors.Is(err, vmm.ErrNoDataChannel) {
		t.Fatalf("DialData of a fake VM: %v; want vmm.ErrNoDataChannel", err)
	}
}
