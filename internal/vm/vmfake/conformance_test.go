package vmfake_test

import (
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
