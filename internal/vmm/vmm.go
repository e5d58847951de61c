// Package vmm is the contract between hearth's lifecycle manager and a
// virtual machine monitor. Drivers (vmm/qemu, later vmm/firecracker) turn a
// Spec into a running guest and a Handle that is persisted, so a restarted
// daemon can find, watch and stop the same process again. Every driver runs
// the conformance suite in vmm/vmmtest.
package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrNotRunning is returned when a handle's process is gone.
var ErrNotRunning = errors.New("vm process not running")

// Capabilities says what a driver (on this host) can do.
type Capabilities struct {
	// Accel is the acceleration in use: "kvm" or "tcg".
	Accel string `json:"accel"`
	// AgentTransport is how the guest agent reaches the host
	// ("virtio-serial" or "vsock"); the host end is always a Unix socket.
	AgentTransport string `json:"agent_transport"`
	// DiskCloning is how per-VM disks are made ("qcow2-overlay", "reflink",
	// "sparse-copy"): never a full copy of the image.
	DiskCloning string `json:"disk_cloning"`
	// GracefulStop: the driver can ask the guest to power off.
	GracefulStop bool `json:"graceful_stop"`
	Pause        bool `json:"pause"`
	Snapshot     bool `json:"snapshot"`
}

// Spec is everything a driver needs to create one VM.
type Spec struct {
	ID        string
	Dir       string // private per-VM directory, created by the driver
	VCPUs     int
	MemoryMiB int
	Kernel    string
	Initrd    string
	Rootfs    string // raw base image, never written to
	// Token is the per-VM agent secret in its text form; drivers write it
	// to Handle.TokenPath and deliver it to the guest at boot without
	// putting it on a command line.
	Token []byte
	// KernelArgs are appended to the driver's own kernel command line.
	KernelArgs []string
	// NICs are network interfaces backed by existing host TAP devices.
	NICs []NIC
}

// NIC is one guest network interface on a host TAP device.
type NIC struct {
	TAP string
	MAC string
}

// Handle is the persisted identity of a VM's process and files.
type Handle struct {
	Driver string `json:"driver"`
	Dir    string `json:"dir"`
	PID    int    `json:"pid,omitempty"`
	// PIDStart is the process start time (clock ticks since boot, from
	// /proc/PID/stat) so a recycled PID is never mistaken for the VM.
	PIDStart      uint64 `json:"pid_start,omitempty"`
	ConsolePath   string `json:"console_path"`
	AgentSocket   string `json:"agent_socket"`
	ControlSocket string `json:"control_socket"`
	DiskPath      string `json:"disk_path"`
	TokenPath     string `json:"token_path"`
	Accel         string `json:"accel,omitempty"`
}

// Marshal encodes the handle for the store.
func (h Handle) Marshal() []byte {
	b, _ := json.Marshal(h) // plain struct of strings and ints: cannot fail
	return b
}

// UnmarshalHandle decodes a stored handle. An empty input is a zero handle.
func UnmarshalHandle(b []byte) (Handle, error) {
	var h Handle
	if len(b) == 0 {
		return h, nil
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return Handle{}, fmt.Errorf("decode vm handle: %w", err)
	}
	return h, nil
}

// Driver boots and controls VMs. Every method is idempotent: calling it again
// after a crash or a partial failure converges rather than failing.
type Driver interface {
	Name() string
	Capabilities() Capabilities
	// Prepare creates the VM's directory, disk and token file and returns
	// the handle (no process yet).
	Prepare(ctx context.Context, spec Spec) (Handle, error)
	// Start launches the VM process, detached from the daemon so it
	// survives a daemon restart, and records its PID in the handle. A
	// process that dies during start is an error naming the reason.
	Start(ctx context.Context, spec Spec, h *Handle) error
	// Alive reports whether the handle's process is running and is the
	// VM's (not a recycled PID).
	Alive(h Handle) bool
	// Watch returns a channel closed when the handle's process exits. It
	// works for processes started by an earlier daemon too.
	Watch(h Handle) (<-chan struct{}, error)
	// Stop asks the guest to power off, waits up to grace, then kills the
	// process. It returns when the process is gone. A process already gone
	// is not an error.
	Stop(ctx context.Context, h Handle, grace time.Duration) error
	// Cleanup removes what Prepare and Start created (disk, sockets,
	// token) except the console log, which stays readable until the
	// caller removes the VM's directory. The process must already be gone.
	Cleanup(ctx context.Context, h Handle) error
}
