// Package vmm is the contract between hearth's lifecycle manager and a
// virtual machine monitor. Drivers (vmm/qemu, vmm/firecracker) turn a Spec
// into a running guest and a Handle that is persisted, so a restarted
// daemon can find, watch and stop the same process again. Every driver runs
// the conformance suite in vmm/vmmtest.
package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
	// KernelArgs are appended to the driver's own kernel command line,
	// which always carries hearth.vm=<ID> and never the token.
	KernelArgs []string
	// NICs are network interfaces backed by existing host TAP devices.
	NICs []NIC
}

// NIC is one guest network interface on a host TAP device. Address,
// Gateway and DNS are the guest's side of it; drivers that can hand them to
// the guest before its agent connects (Firecracker's MMDS) do, the agent is
// told them again over its channel either way.
type NIC struct {
	TAP     string
	MAC     string
	Address string   // CIDR, e.g. 10.88.0.5/24; empty if unknown
	Gateway string   // empty if unknown
	DNS     []string // resolvers
}

// Handle is the persisted identity of a VM's process and files.
type Handle struct {
	Driver string `json:"driver"`
	Dir    string `json:"dir"`
	PID    int    `json:"pid,omitempty"`
	// PIDStart is the process start time (clock ticks since boot, from
	// /proc/PID/stat) so a recycled PID is never mistaken for the VM.
	PIDStart uint64 `json:"pid_start,omitempty"`
	// ConsoleStream is the host end of the guest's serial console, which
	// the daemon reads (OpenConsole) into a log it keeps within bounds.
	// The VMM itself never writes the console to a file.
	ConsoleStream string `json:"console_stream,omitempty"`
	// ConsolePath is set only in handles of VMs started by an older
	// hearth, whose VMM wrote the console to this file itself.
	ConsolePath string `json:"console_path,omitempty"`
	AgentSocket string `json:"agent_socket"`
	// AgentVsockPort, when set, says AgentSocket is the host end of a
	// Firecracker vsock device: a connection reaches the guest only after
	// "CONNECT <port>\n" is answered with "OK <host port>\n" (DialAgent
	// does this). Zero means AgentSocket is a plain stream to the agent.
	AgentVsockPort uint32 `json:"agent_vsock_port,omitempty"`
	// DataSocket is the host end of the VM's data channel, over which
	// the agent serves the work API (package workapi): a plain stream to
	// the agent (QEMU's second virtio-serial chardev) or, with
	// DataVsockPort set, a Firecracker vsock device socket as for
	// AgentVsockPort. DialData connects to it. Handles of VMs started by
	// an older hearth have none (ErrNoDataChannel).
	DataSocket    string `json:"data_socket,omitempty"`
	DataVsockPort uint32 `json:"data_vsock_port,omitempty"`
	ControlSocket string `json:"control_socket"`
	DiskPath      string `json:"disk_path"`
	TokenPath     string `json:"token_path"`
	Accel         string `json:"accel,omitempty"`
	// Jail is the jailer's chroot directory when the VM runs jailed.
	Jail string `json:"jail,omitempty"`
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

// SizeChecker is implemented by drivers with limits of their own on a VM's
// size (Firecracker takes 1 or an even number of vCPUs), so a request
// they cannot boot is refused before anything is created. The error says
// what is wrong in the caller's terms.
type SizeChecker interface {
	CheckSize(vcpus, memoryMiB int) error
}

// ExitExplainer is implemented by drivers that can say, from the VMM's own
// output, why a VM's process ended (a refusal, a KVM error, a guest
// reboot). The answer is one short line, or "" if there is nothing to say.
type ExitExplainer interface {
	ExitReason(h Handle) string
}

// Process is one VMM process found on the host: its PID and start time
// (as in Handle), so a recycled PID is never mistaken for it.
type Process struct {
	PID   int
	Start uint64
}

// ProcessFinder is implemented by drivers that can find their processes
// on the host without a handle: from the VM directory each process was
// started for, which the process itself carries (QEMU's pidfile, a
// Firecracker's working directory). A daemon killed after launching a
// process but before recording its PID finds it this way, and so do
// strays of VMs the store does not know.
type ProcessFinder interface {
	// FindProcesses lists the driver's processes working for a VM whose
	// directory is directly under vmsDir, by that directory's name (the
	// VM's id). Processes of VMs elsewhere (another hearth's) are never
	// listed, nor the helpers a VMM process runs itself.
	FindProcesses(vmsDir string) (map[string][]Process, error)
	// KillProcess ends p, if it still is that process, and returns once
	// it is gone.
	KillProcess(p Process) error
}

// Pauser is implemented by drivers whose Capabilities say Pause: a paused
// VM keeps its memory and devices but runs no vCPU.
type Pauser interface {
	Pause(ctx context.Context, h Handle) error
	Resume(ctx context.Context, h Handle) error
}

// Snapshot is the saved state of a paused VM: its device state and its
// memory, in files the driver wrote. A snapshot holds no per-VM identity
// that outlives it: Restore gives the restored VM the token and network of
// the spec it is restored for.
type Snapshot struct {
	Driver    string `json:"driver"`
	StatePath string `json:"state_path"`
	MemPath   string `json:"mem_path"`
	// DiskPath is the guest's disk as it was when the snapshot was taken
	// (empty for drivers whose disks are snapshotted otherwise).
	DiskPath string    `json:"disk_path,omitempty"`
	Created  time.Time `json:"created"`
}

// Snapshotter is implemented by drivers whose Capabilities say Snapshot.
type Snapshotter interface {
	// CreateSnapshot writes the state of a paused VM into dir.
	CreateSnapshot(ctx context.Context, h Handle, dir string) (Snapshot, error)
	// Restore starts a new VM process for spec (prepared with Prepare)
	// from snap instead of booting it, re-injects spec's identity (token,
	// TAP, agent socket, network) and resumes it.
	Restore(ctx context.Context, spec Spec, h *Handle, snap Snapshot) error
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
	// process that dies during start is an error naming the reason. ctx
	// bounds the start only: the VM keeps running after it is done.
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

// WriteToken writes a VM's token (Spec.Token) to path, readable by its
// owner only, through a temporary file so a crash never leaves half a token.
func WriteToken(path string, token []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, token, 0o600); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write token: %w", err)
	}
	return nil
}
