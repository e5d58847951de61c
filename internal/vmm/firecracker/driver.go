// Package firecracker is the Firecracker driver, hearth's production VMM.
// It drives one firecracker process per VM over its API socket (API
// v1.16, modelled in api.go from Firecracker's swagger document): boot
// source, a root drive that is a private copy-on-write clone of the image
// (reflink where the filesystem can, else a sparse copy), a virtio-net
// interface on the VM's TAP, a vsock device whose host end is the agent's
// Unix socket (its control channel on one port, its data channel on
// another), MMDS v2 carrying the VM's token and network, the logger and
// metrics and its own output into FIFOs the daemon reads (logs.go), the
// serial console into a FIFO the daemon reads. Optionally every VM runs
// under Firecracker's jailer (chroot, uid/gid, cgroup limits, network
// namespace). Pause, resume and snapshots are offered as vmm.Pauser and
// vmm.Snapshotter.
//
// Every path given to Firecracker is relative to its working directory:
// the VM's directory, or the jail's root, where the jailer chroots. So the
// requests are the same jailed or not, and a snapshot names no path of the
// VM it was taken from.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/proc"
	"github.com/hearth-project/hearth/internal/workapi"
)

// Names of the files in a VM's root (its directory, or its jail's root).
// Firecracker is given these relative names.
const (
	fileAPI     = "firecracker.sock"
	fileVsock   = "agent.vsock"
	fileConsole = "console.fifo"
	// fileOldConsole is where VMs started by an older hearth have
	// Firecracker write their console.
	fileOldConsole = "console.log"
	fileDisk       = "rootfs.ext4"
	fileToken      = "token"
	// Firecracker's log, metrics, and standard output and error: FIFOs
	// the daemon reads.
	fileLogFIFO     = "log.fifo"
	fileMetricsFIFO = "metrics.fifo"
	fileOutFIFO     = "output.fifo"
	// dirKeptLog, in the VM's directory (never in a jail), is the bounded
	// log of what Firecracker wrote to its log and output.
	dirKeptLog = "firecracker-log"
	// Files VMs started by an older hearth have Firecracker write
	// instead.
	fileLog     = "firecracker.log"
	fileMetrics = "metrics.json"
	fileOut     = "firecracker.out"

	fileKernel   = "vmlinux"
	fileInitrd   = "initrd.img"
	fileSnapshot = "snapshot.state"
	fileMemory   = "snapshot.mem"
	fileSnapDisk = "rootfs.ext4"
)

// Device names the driver gives Firecracker.
const (
	rootDriveID = "rootfs"
	ifaceID     = "eth0"
	guestCID    = 3
)

// Config configures the driver.
type Config struct {
	// Binary is the firecracker executable.
	Binary string
	// Kernel, if set, boots every VM instead of its image's kernel, with
	// Initrd (which may be empty: a Firecracker guest kernel has its
	// drivers built in). Images carry Debian's kernel, whose virtio-mmio
	// drivers cannot find Firecracker's devices.
	Kernel, Initrd string
	// Jailer, when its Binary is set, runs every VM under the jailer.
	Jailer JailerConfig
	// Clone is "auto" (probe StateDir), "reflink" or "sparse-copy".
	Clone string
	// ProbeDir is where VM directories live; "auto" cloning is probed
	// there.
	ProbeDir string
	// SocketTimeout bounds the wait for the API socket after launch
	// (zero: 5s); APITimeout bounds each API request (zero: 10s).
	SocketTimeout time.Duration
	APITimeout    time.Duration
	// Logger receives Firecracker's own log lines and metrics, tagged
	// with the VM. Nil discards them.
	Logger *slog.Logger
	// LogMaxSize bounds what is kept on disk of one VM's Firecracker log
	// and output (zero: DefaultLogMaxSize; at least MinLogMaxSize).
	LogMaxSize int64
	// LogRate is how many of one VM's lines a second (after LogBurst at
	// once) go into Logger; the rest are counted, and a summary says how
	// many were left out (zero: DefaultLogRate, DefaultLogBurst).
	LogRate, LogBurst int
}

// Driver runs VMs under Firecracker.
type Driver struct {
	cfg   Config
	clone string
	log   *slog.Logger
}

var (
	_ vmm.Driver        = (*Driver)(nil)
	_ vmm.Pauser        = (*Driver)(nil)
	_ vmm.Snapshotter   = (*Driver)(nil)
	_ vmm.ExitExplainer = (*Driver)(nil)
	_ vmm.SizeChecker   = (*Driver)(nil)
	_ vmm.ProcessFinder = (*Driver)(nil)
)

// New checks the configuration and resolves the cloning method.
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "firecracker"
	}
	if cfg.SocketTimeout <= 0 {
		cfg.SocketTimeout = 5 * time.Second
	}
	if err := cfg.Jailer.validate(); err != nil {
		return nil, err
	}
	if cfg.LogMaxSize == 0 {
		cfg.LogMaxSize = DefaultLogMaxSize
	}
	if cfg.LogRate == 0 {
		cfg.LogRate = DefaultLogRate
	}
	if cfg.LogBurst == 0 {
		cfg.LogBurst = DefaultLogBurst
	}
	switch {
	case cfg.LogMaxSize < MinLogMaxSize:
		return nil, fmt.Errorf("firecracker: log max size %d must be at least %d", cfg.LogMaxSize, MinLogMaxSize)
	case cfg.LogRate < 0 || cfg.LogBurst < 1:
		return nil, fmt.Errorf("firecracker: log rate %d and burst %d must be positive", cfg.LogRate, cfg.LogBurst)
	}
	clone := cfg.Clone
	switch clone {
	case "", "auto":
		if cfg.ProbeDir == "" {
			return nil, errors.New("firecracker: disk cloning \"auto\" needs the directory to probe")
		}
		var err error
		if clone, err = ProbeClone(cfg.ProbeDir); err != nil {
			return nil, fmt.Errorf("firecracker: %w", err)
		}
	case CloneReflink, CloneSparse:
	default:
		return nil, fmt.Errorf("firecracker: unknown disk cloning %q (want auto, %s or %s)", cfg.Clone, CloneReflink, CloneSparse)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{cfg: cfg, clone: clone, log: log}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Accel:          "kvm",
		AgentTransport: "vsock",
		DiskCloning:    d.clone,
		GracefulStop:   true,
		Pause:          true,
		Snapshot:       true,
	}
}

// Jailed reports whether VMs run under the jailer.
func (d *Driver) Jailed() bool { return d.cfg.Jailer.Binary != "" }

// root is the directory Firecracker sees as its working directory.
func (d *Driver) root(spec vmm.Spec) string {
	if d.Jailed() {
		return d.cfg.Jailer.root(spec.Dir, d.cfg.Binary, spec.ID)
	}
	return spec.Dir
}

func (d *Driver) handleFor(spec vmm.Spec) vmm.Handle {
	root := d.root(spec)
	h := vmm.Handle{
		Driver: d.Name(),
		Dir:    spec.Dir,
		// Sockets are reached through the VM's directory (symlinks into
		// a jail): a jail path is too long for a Unix socket address. The
		// console's FIFO has no such limit.
		ConsoleStream:  filepath.Join(root, fileConsole),
		AgentSocket:    filepath.Join(spec.Dir, fileVsock),
		AgentVsockPort: agentapi.VsockPort,
		// The data channel is another port of the same vsock device.
		DataSocket:    filepath.Join(spec.Dir, fileVsock),
		DataVsockPort: workapi.VsockPort,
		ControlSocket: filepath.Join(spec.Dir, fileAPI),
		DiskPath:      filepath.Join(root, fileDisk),
		TokenPath:     filepath.Join(spec.Dir, fileToken),
		Accel:         "kvm",
	}
	if d.Jailed() {
		h.Jail = root
	}
	return h
}

// boot applies the configured kernel, if any, to spec.
func (d *Driver) boot(spec vmm.Spec) vmm.Spec {
	if d.cfg.Kernel != "" {
		spec.Kernel, spec.Initrd = d.cfg.Kernel, d.cfg.Initrd
	}
	return spec
}

// Prepare implements vmm.Driver: the VM's directory (and jail), its token
// file, its private disk, and in a jail the kernel and initrd it boots.
func (d *Driver) Prepare(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	spec = d.boot(spec)
	h := d.handleFor(spec)
	if err := checkSpec(spec); err != nil {
		return h, err
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return h, fmt.Errorf("create vm dir: %w", err)
	}
	if err := vmm.WriteToken(h.TokenPath, spec.Token); err != nil {
		return h, err
	}
	root := d.root(spec)
	if d.Jailed() {
		if err := d.cfg.Jailer.prepareRoot(root, spec); err != nil {
			return h, err
		}
		for name, target := range map[string]string{fileAPI: fileAPI, fileVsock: fileVsock} {
			if err := symlinkInto(filepath.Join(root, target), filepath.Join(spec.Dir, name)); err != nil {
				return h, err
			}
		}
	}
	if _, err := os.Stat(h.DiskPath); err == nil {
		return h, nil // cloned by an earlier attempt
	}
	if err := CloneDisk(d.clone, spec.Rootfs, h.DiskPath); err != nil {
		return h, fmt.Errorf("create disk: %w", err)
	}
	if d.Jailed() {
		if err := d.cfg.Jailer.own(h.DiskPath); err != nil {
			return h, err
		}
	}
	return h, nil
}

func checkSpec(spec vmm.Spec) error {
	if err := CheckSize(spec.VCPUs, spec.MemoryMiB); err != nil {
		return fmt.Errorf("firecracker: %w", err)
	}
	switch {
	case spec.ID == "" || len(spec.ID) > 64 || strings.Trim(spec.ID, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "":
		return fmt.Errorf("firecracker: vm id %q must be 1-64 letters, digits or '-'", spec.ID)
	case len(spec.NICs) != 1:
		// The agent's token travels through MMDS, which answers only on
		// a network interface.
		return fmt.Errorf("firecracker: a vm needs exactly one network interface (the agent's token is delivered through MMDS on it), got %d", len(spec.NICs))
	case spec.Kernel == "" || spec.Rootfs == "":
		return errors.New("firecracker: kernel and rootfs are required")
	}
	return nil
}

// CheckSize says whether Firecracker can run a VM of this size: 1 or an
// even number of vCPUs up to 32, and some memory.
func CheckSize(vcpus, memoryMiB int) error {
	switch {
	case vcpus < 1 || vcpus > 32 || (vcpus > 1 && vcpus%2 != 0):
		return fmt.Errorf("vcpus must be 1 or an even number up to 32 with the firecracker driver, got %d", vcpus)
	case memoryMiB < 1:
		return fmt.Errorf("memory_mib must be positive, got %d", memoryMiB)
	}
	return nil
}

// CheckSize implements vmm.SizeChecker.
func (d *Driver) CheckSize(vcpus, memoryMiB int) error { return CheckSize(vcpus, memoryMiB) }

// BootArgs is the kernel command line for spec. Firecracker adds the
// virtio-mmio device parameters itself.
func BootArgs(spec vmm.Spec) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "pci=off", "root=/dev/vda", "rw", "quiet", "hearth.vm=" + spec.ID}
	return strings.Join(append(args, spec.KernelArgs...), " ")
}

// Requests returns the API requests that configure and start spec's VM,
// in the order they are sent. The kernel and initrd paths are the host's
// (or, jailed, their names in the jail).
func (d *Driver) Requests(spec vmm.Spec) []Request {
	spec = d.boot(spec)
	kernel, initrd := spec.Kernel, spec.Initrd
	if d.Jailed() {
		kernel, initrd = fileKernel, ""
		if spec.Initrd != "" {
			initrd = fileInitrd
		}
	}
	nic := spec.NICs[0]
	reqs := d.loggingRequests()
	reqs = append(reqs,
		Request{"PUT", "/machine-config", MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}},
		Request{"PUT", "/boot-source", BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: BootArgs(spec)}},
		Request{"PUT", "/drives/" + rootDriveID, Drive{DriveID: rootDriveID, PathOnHost: fileDisk, IsRootDevice: true}},
		Request{"PUT", "/network-interfaces/" + ifaceID, NetworkInterface{IfaceID: ifaceID, HostDevName: nic.TAP, GuestMAC: nic.MAC}},
		Request{"PUT", "/vsock", Vsock{GuestCID: guestCID, UDSPath: fileVsock}},
		Request{"PUT", "/mmds/config", MMDSConfig{Version: "V2", NetworkInterfaces: []string{ifaceID}}},
		Request{"PUT", "/mmds", mmdsDocument(spec)},
		// Firecracker opens the FIFO for reading and writing and writes
		// it without blocking: what the daemon does not read in time is
		// dropped, and a VM never waits for the daemon.
		Request{"PUT", "/serial", Serial{SerialOutPath: fileConsole}},
		Request{"PUT", "/actions", Action{ActionType: ActionInstanceStart}},
	)
	return reqs
}

func (d *Driver) loggingRequests() []Request {
	return []Request{
		// FIFOs, written as the console's (see logs.go).
		{"PUT", "/logger", Logger{LogPath: fileLogFIFO, Level: "Info", ShowLevel: true}},
		{"PUT", "/metrics", Metrics{MetricsPath: fileMetricsFIFO}},
	}
}

// Request is one API call.
type Request struct {
	Method, Path string
	Body         any
}

func mmdsDocument(spec vmm.Spec) agentapi.MMDSDocument {
	doc := agentapi.MMDSDocument{Hearth: agentapi.MMDSHearth{VMID: spec.ID, Token: string(spec.Token)}}
	if n := spec.NICs[0]; n.Address != "" {
		doc.Hearth.Network = &agentapi.NetworkConfig{MAC: n.MAC, Address: n.Address, Gateway: n.Gateway, DNS: n.DNS}
	}
	return doc
}

// Start implements vmm.Driver: it launches firecracker (under the jailer
// when configured) in its own session, waits for the API socket, sends the
// configuration and InstanceStart. Any refusal fails the start with
// Firecracker's fault message and leaves no process behind.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec, h *vmm.Handle) error {
	if h.PID > 0 && proc.Alive(h.PID, h.PIDStart) {
		return nil
	}
	if err := checkSpec(spec); err != nil {
		return err
	}
	if err := d.launch(ctx, spec, h, d.root(spec), false); err != nil {
		return err
	}
	c := NewClient(h.ControlSocket, d.cfg.APITimeout)
	for _, r := range d.Requests(spec) {
		if err := d.send(ctx, c, r); err != nil {
			d.kill(*h)
			return fmt.Errorf("configure firecracker: %w%s", err, d.outputTail(*h))
		}
	}
	return nil
}

func (d *Driver) send(ctx context.Context, c *Client, r Request) error {
	if r.Method == "PATCH" {
		return c.Patch(ctx, r.Path, r.Body)
	}
	return c.Put(ctx, r.Path, r.Body)
}

// launch starts the process and waits for its API socket. Its output
// goes into a FIFO the daemon reads (with its log and metrics, from the
// start), except that a restored VM's standard output is its serial
// console (PUT /serial is refused after a snapshot is loaded), so with
// consoleOut it goes into the console's FIFO.
func (d *Driver) launch(ctx context.Context, spec vmm.Spec, h *vmm.Handle, root string, consoleOut bool) error {
	// An earlier process of this VM has ended (Start and Restore launch
	// none while one runs); its last lines are read before its pipes go.
	awaitFollower(h.Dir, followerWait)
	for _, name := range []string{fileAPI, fileVsock} {
		_ = os.Remove(filepath.Join(root, name))
	}
	// Firecracker opens the log's and the metrics' FIFOs itself (jailed,
	// as the jail's user); its output's the daemon opens for it.
	for _, p := range []string{h.ConsoleStream, filepath.Join(root, fileLogFIFO), filepath.Join(root, fileMetricsFIFO), filepath.Join(root, fileOutFIFO)} {
		if err := d.makeFIFO(p); err != nil {
			return err
		}
	}
	fol, err := d.newFollower(*h)
	if err == nil && fol == nil {
		err = errors.New("its FIFO is gone")
	}
	if err != nil {
		return fmt.Errorf("read firecracker's log: %w", err)
	}
	started := false
	defer func() {
		if !started {
			fol.close()
		}
	}()
	// Read-write, as Firecracker opens its log: never EPIPE when no daemon
	// reads, and non-blocking (set before the process shares it), so what
	// a full pipe cannot take is lost, not waited for.
	outFD, err := openPipe(filepath.Join(root, fileOutFIFO))
	if err != nil {
		return fmt.Errorf("open output: %w", err)
	}
	out := os.NewFile(uintptr(outFD), fileOutFIFO)
	defer out.Close()
	stdout := out
	if consoleOut {
		// Read and write, as Firecracker opens serial_out_path: the open
		// does not wait for a reader, and none is needed later.
		if stdout, err = os.OpenFile(h.ConsoleStream, os.O_RDWR, 0); err != nil {
			return fmt.Errorf("open console: %w", err)
		}
		defer stdout.Close()
	}
	argv := d.argv(spec)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = stdout, out
	// Its own session: signals to the daemon's process group never reach
	// VMs, and the VM outlives the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("firecracker binary not found: %s (set firecracker.binary)", argv[0])
		}
		return fmt.Errorf("start firecracker: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reap it while we live
	started = true
	followers.Lock()
	followers.m[h.Dir] = fol
	followers.Unlock()
	go fol.run(h.Dir, exited)
	start, err := proc.StartTime(cmd.Process.Pid)
	if err != nil {
		<-exited
		return fmt.Errorf("firecracker exited at once%s", d.outputTail(*h))
	}
	h.PID, h.PIDStart = cmd.Process.Pid, start
	if err := d.waitSocket(ctx, h.ControlSocket, exited); err != nil {
		d.kill(*h)
		return fmt.Errorf("%w%s", err, d.outputTail(*h))
	}
	return nil
}

func (d *Driver) argv(spec vmm.Spec) []string {
	fc := []string{"--api-sock", fileAPI}
	if d.Jailed() {
		// The jailer gives firecracker --id (and its start times) itself.
		return d.cfg.Jailer.argv(d.cfg.Binary, spec, fc)
	}
	return append([]string{d.cfg.Binary}, append(fc, "--id", spec.ID)...)
}

// waitSocket waits until the API socket accepts a connection.
func (d *Driver) waitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	deadline := time.NewTimer(d.cfg.SocketTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("firecracker exited before its API socket appeared")
		case <-deadline.C:
			return fmt.Errorf("firecracker API socket %s did not appear within %s", path, d.cfg.SocketTimeout)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the firecracker API socket: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func (d *Driver) kill(h vmm.Handle) { _ = proc.KillWait(h.PID, h.PIDStart, 10*time.Second) }

// Alive implements vmm.Driver.
func (d *Driver) Alive(h vmm.Handle) bool { return proc.Alive(h.PID, h.PIDStart) }

// Watch implements vmm.Driver. It also follows the VM's Firecracker log,
// metrics and output (logs.go) until the process exits, for VMs started
// by an earlier daemon too.
func (d *Driver) Watch(h vmm.Handle) (<-chan struct{}, error) {
	if h.PID <= 0 {
		ch := make(chan struct{})
		close(ch)
		return ch, nil
	}
	ch, err := proc.Watch(h.PID, h.PIDStart)
	if err != nil {
		return nil, err
	}
	d.follow(h, ch)
	return ch, nil
}

// Stop implements vmm.Driver: SendCtrlAltDel (the guest reboots, and a
// Firecracker guest's reboot ends the process), then SIGKILL after grace.
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	if !d.Alive(h) {
		return nil
	}
	if grace > 0 {
		actx, cancel := context.WithTimeout(ctx, min(grace, 2*time.Second))
		err := NewClient(h.ControlSocket, 0).Action(actx, ActionSendCtrlAltDel)
		cancel()
		if err == nil && proc.WaitGone(h.PID, h.PIDStart, grace) {
			return nil
		}
	}
	if err := proc.KillWait(h.PID, h.PIDStart, 10*time.Second); err != nil {
		return fmt.Errorf("kill firecracker: %w", err)
	}
	return nil
}

// Cleanup implements vmm.Driver: everything but the console log and the
// kept Firecracker log goes; a jail is removed, its console moved into
// the VM's directory first.
func (d *Driver) Cleanup(ctx context.Context, h vmm.Handle) error {
	if d.Alive(h) {
		return fmt.Errorf("cleanup: firecracker pid %d still running", h.PID)
	}
	if h.Dir == "" {
		return nil
	}
	// The process is gone: its follower reads the last lines and ends.
	awaitFollower(h.Dir, followerWait)
	root := h.Dir
	if h.Jail != "" {
		root = h.Jail
		if h.ConsolePath != "" {
			// Started by an older hearth, which had the console written
			// into the jail.
			if err := keepConsole(filepath.Join(root, fileOldConsole), h.ConsolePath); err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
		}
	}
	var paths []string
	for _, name := range []string{fileAPI, fileVsock, fileConsole, fileDisk, fileDisk + ".tmp",
		fileLogFIFO, fileMetricsFIFO, fileOutFIFO, fileLog, fileMetrics, fileOut,
		fileSnapshot, fileMemory, fileKernel, fileInitrd} {
		paths = append(paths, filepath.Join(root, name))
	}
	paths = append(paths, h.TokenPath, h.TokenPath+".tmp", h.AgentSocket, h.ControlSocket)
	// Listeners for guest-initiated vsock connections: <uds_path>_<port>.
	if m, _ := filepath.Glob(filepath.Join(root, fileVsock+"_*")); m != nil {
		paths = append(paths, m...)
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cleanup: %w", err)
		}
	}
	if h.Jail != "" {
		return d.cfg.Jailer.cleanup(h)
	}
	return nil
}

// makeFIFO makes a FIFO Firecracker writes into (afresh: a leftover could
// be anything), owned in a jail by the jail's user, who opens it.
func (d *Driver) makeFIFO(path string) error {
	_ = os.Remove(path)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("make fifo %s: %w", filepath.Base(path), err)
	}
	if d.Jailed() {
		return d.cfg.Jailer.own(path)
	}
	return nil
}

// keepConsole moves a jailed VM's console log over the symlink to it in
// the VM's directory (VMs started by an older hearth only).
func keepConsole(jailed, link string) error {
	if _, err := os.Stat(jailed); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return nil // already moved
	}
	_ = os.Remove(link)
	return os.Rename(jailed, link)
}

// Pause implements vmm.Pauser.
func (d *Driver) Pause(ctx context.Context, h vmm.Handle) error {
	return NewClient(h.ControlSocket, d.cfg.APITimeout).Patch(ctx, "/vm", VMState{State: "Paused"})
}

// Resume implements vmm.Pauser.
func (d *Driver) Resume(ctx context.Context, h vmm.Handle) error {
	return NewClient(h.ControlSocket, d.cfg.APITimeout).Patch(ctx, "/vm", VMState{State: "Resumed"})
}

// symlinkInto makes link point at target, replacing what was there.
func symlinkInto(target, link string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	_ = os.Remove(link)
	if err := os.Symlink(target, link); err != nil {
		return fmt.Errorf("link %s: %w", link, err)
	}
	return nil
}

// itoa is strconv.Itoa, for argument lists.
func itoa(n int) string { return strconv.Itoa(n) }

// FindProcesses implements vmm.ProcessFinder: a firecracker process works
// in its VM's directory (its working directory, or for a jailed one its
// root, is there) from the moment it exists. Processes a firecracker runs
// itself (the fake's guest) end with it and are not listed. Firecrackers
// hearth did not start, or under another VMs directory, are never listed.
func (d *Driver) FindProcesses(vmsDir string) (map[string][]vmm.Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	prefix := filepath.Clean(vmsDir) + string(filepath.Separator)
	byPID := map[int]vmProcess{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		args, err := proc.Cmdline(pid)
		if err != nil || len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "firecracker") {
			continue
		}
		dir, ok := vmDirOf(pid, prefix)
		if !ok {
			continue
		}
		start, err := proc.StartTime(pid)
		if err != nil {
			continue // gone meanwhile
		}
		byPID[pid] = vmProcess{dir, vmm.Process{PID: pid, Start: start}}
	}
	return topmost(byPID, proc.ParentPID), nil
}

// vmProcess is a process found working for the VM directory dir.
type vmProcess struct {
	dir string
	p   vmm.Process
}

// topmost groups found processes by VM directory, leaving out those whose
// parent is a found process of the same VM: they are part of it.
func topmost(byPID map[int]vmProcess, parentOf func(int) (int, error)) map[string][]vmm.Process {
	out := map[string][]vmm.Process{}
	for pid, f := range byPID {
		if ppid, err := parentOf(pid); err == nil {
			if parent, ok := byPID[ppid]; ok && parent.dir == f.dir {
				continue
			}
		}
		out[f.dir] = append(out[f.dir], f.p)
	}
	return out
}

// vmDirOf returns the VM directory a firecracker process works for: the
// first path element under prefix of its root (jailed) or working
// directory.
func vmDirOf(pid int, prefix string) (string, bool) {
	for _, link := range []string{"root", "cwd"} {
		p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/" + link)
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(p+string(filepath.Separator), prefix); ok {
			if id, _, _ := strings.Cut(rest, string(filepath.Separator)); id != "" {
				return id, true
			}
		}
	}
	return "", false
}

// KillProcess implements vmm.ProcessFinder.
func (d *Driver) KillProcess(p vmm.Process) error {
	if err := proc.KillWait(p.PID, p.Start, 10*time.Second); err != nil {
		return fmt.Errorf("kill firecracker: %w", err)
	}
	return nil
}
