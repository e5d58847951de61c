// Package qemu is the QEMU driver: `-M microvm` guests with KVM when the host
// has it and TCG otherwise, a qcow2 overlay per VM over the raw image, the
// agent's control channel and its data channel on two virtio-serial ports
// whose host ends are Unix sockets, QMP for control and the serial console
// on a Unix socket QEMU listens on, which the daemon reads (QEMU writes no
// console file).
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/proc"
	"github.com/hearth-project/hearth/internal/workapi"
)

// Names of the files a VM's directory holds.
const (
	fileConsole = "console.sock"
	fileAgent   = "agent.sock"
	fileData    = "data.sock"
	fileQMP     = "qmp.sock"
	fileDisk    = "disk.qcow2"
	fileToken   = "token"
	filePID     = "qemu.pid"
	fileStderr  = "qemu.stderr"
)

// AgentPortName is the virtio-serial port name the guest agent looks for.
const AgentPortName = "hearth.agent"

// Config configures the driver.
type Config struct {
	Binary   string // qemu-system-x86_64
	ImgTool  string // qemu-img
	Accel    string // "auto", "kvm" or "tcg"
	TSCkHz   int    // host TSC frequency, for tsc_early_khz under TCG
	KVMProbe func() bool
}

// Driver runs VMs under QEMU.
type Driver struct {
	cfg   Config
	accel string
}

var (
	_ vmm.Driver        = (*Driver)(nil)
	_ vmm.ProcessFinder = (*Driver)(nil)
)

// New resolves the accelerator once ("auto" becomes "kvm" or "tcg").
func New(cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	if cfg.ImgTool == "" {
		cfg.ImgTool = "qemu-img"
	}
	if cfg.KVMProbe == nil {
		cfg.KVMProbe = KVMUsable
	}
	accel := cfg.Accel
	switch accel {
	case "", "auto":
		accel = "tcg"
		if cfg.KVMProbe() {
			accel = "kvm"
		}
	case "kvm", "tcg":
	default:
		return nil, fmt.Errorf("qemu: unknown accel %q", cfg.Accel)
	}
	if accel == "tcg" && cfg.TSCkHz <= 0 {
		return nil, errors.New("qemu: tcg needs the host tsc frequency (tsc_early_khz), none given")
	}
	return &Driver{cfg: cfg, accel: accel}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Accel:          d.accel,
		AgentTransport: "virtio-serial",
		DiskCloning:    "qcow2-overlay",
		GracefulStop:   true,
	}
}

// Prepare implements vmm.Driver: directory, token file, qcow2 overlay.
func (d *Driver) Prepare(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	h := handleFor(spec.Dir)
	h.Driver = d.Name()
	h.Accel = d.accel
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return h, fmt.Errorf("create vm dir: %w", err)
	}
	if err := vmm.WriteToken(h.TokenPath, spec.Token); err != nil {
		return h, err
	}
	if _, err := os.Stat(h.DiskPath); err == nil {
		return h, nil // overlay exists from an earlier attempt
	}
	base, err := filepath.Abs(spec.Rootfs)
	if err != nil {
		return h, fmt.Errorf("resolve rootfs: %w", err)
	}
	tmp := h.DiskPath + ".tmp"
	cmd := exec.CommandContext(ctx, d.cfg.ImgTool, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return h, fmt.Errorf("create overlay: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, h.DiskPath); err != nil {
		return h, fmt.Errorf("create overlay: %w", err)
	}
	return h, nil
}

func handleFor(dir string) vmm.Handle {
	return vmm.Handle{
		Dir:           dir,
		ConsoleStream: filepath.Join(dir, fileConsole),
		AgentSocket:   filepath.Join(dir, fileAgent),
		DataSocket:    filepath.Join(dir, fileData),
		ControlSocket: filepath.Join(dir, fileQMP),
		DiskPath:      filepath.Join(dir, fileDisk),
		TokenPath:     filepath.Join(dir, fileToken),
	}
}

// Args builds the QEMU command line for spec (without the binary).
func (d *Driver) Args(spec vmm.Spec, h vmm.Handle) []string {
	kargs := []string{"console=ttyS0", "root=/dev/vda", "rw", "quiet", "panic=-1", "hearth.vm=" + spec.ID}
	accel := []string{"-accel", "kvm", "-cpu", "host"}
	if d.accel == "tcg" {
		// Without a PIT/HPET reference, microvm guests under TCG may hang
		// calibrating the TSC; tell the kernel the frequency instead.
		kargs = append(kargs, "tsc_early_khz="+strconv.Itoa(d.cfg.TSCkHz))
		// The default TCG CPU model lacks instructions current userlands
		// use (Node.js builds of the AI CLIs die with SIGILL); "max"
		// offers everything TCG can emulate.
		accel = []string{"-accel", "tcg", "-cpu", "max"}
	}
	kargs = append(kargs, spec.KernelArgs...)
	args := []string{
		"-name", "hearth-" + spec.ID,
		"-M", "microvm",
	}
	args = append(args, accel...)
	args = append(args,
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-daemonize", "-pidfile", filepath.Join(h.Dir, filePID),
		// The serial console is a socket QEMU listens on: with no reader
		// connected it discards what the guest writes, and with a slow
		// one its UART waits (back-pressure on the guest alone).
		"-chardev", "socket,id=console,path="+h.ConsoleStream+",server=on,wait=off",
		"-serial", "chardev:console",
		"-kernel", spec.Kernel,
		"-initrd", spec.Initrd,
		"-append", strings.Join(kargs, " "),
		"-drive", "id=root,file="+h.DiskPath+",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-fw_cfg", "name=opt/hearth/token,file="+h.TokenPath,
		"-chardev", "socket,id=agent,path="+h.AgentSocket+",server=on,wait=off",
		"-chardev", "socket,id=data,path="+h.DataSocket+",server=on,wait=off",
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
		"-device", "virtserialport,chardev=data,name="+workapi.PortName,
		"-qmp", "unix:"+h.ControlSocket+",server=on,wait=off",
	)
	for i, n := range spec.NICs {
		id := "net" + strconv.Itoa(i)
		args = append(args,
			"-netdev", "tap,id="+id+",ifname="+n.TAP+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev="+id+",mac="+n.MAC)
	}
	return args
}

// Start implements vmm.Driver. QEMU daemonizes itself, so the VM process is
// never the daemon's child and outlives it; its PID and start time go into
// the handle.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec, h *vmm.Handle) error {
	if h.PID > 0 && proc.Alive(h.PID, h.PIDStart) {
		return nil // already running
	}
	pidFile := filepath.Join(h.Dir, filePID)
	for _, p := range []string{pidFile, h.AgentSocket, h.DataSocket, h.ControlSocket, h.ConsoleStream} {
		if p != "" {
			_ = os.Remove(p)
		}
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, d.cfg.Binary, d.Args(spec, *h)...)
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	cmd.Dir = h.Dir
	// Its own session: signals to the daemon's process group never reach VMs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		_ = os.WriteFile(filepath.Join(h.Dir, fileStderr), stderr.Bytes(), 0o600)
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("qemu failed to start: %s", msg)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("read qemu pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("parse qemu pidfile: %w", err)
	}
	start, err := proc.StartTime(pid)
	if err != nil {
		return fmt.Errorf("qemu exited right after start: %w", err)
	}
	h.PID, h.PIDStart = pid, start
	return nil
}

// Alive implements vmm.Driver.
func (d *Driver) Alive(h vmm.Handle) bool { return proc.Alive(h.PID, h.PIDStart) }

// Watch implements vmm.Driver.
func (d *Driver) Watch(h vmm.Handle) (<-chan struct{}, error) {
	if h.PID <= 0 {
		ch := make(chan struct{})
		close(ch)
		return ch, nil
	}
	return proc.Watch(h.PID, h.PIDStart)
}

// Stop implements vmm.Driver: ACPI power-down through QMP, then QMP quit,
// then SIGKILL. The caller's cancellation cannot leave the VM half-stopped:
// the kill path runs regardless.
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	if !d.Alive(h) {
		return nil
	}
	if q, err := dialQMP(ctx, h.ControlSocket); err == nil {
		if err := q.execute("system_powerdown"); err == nil && proc.WaitGone(h.PID, h.PIDStart, grace) {
			q.Close()
			return nil
		}
		// The grace may have outlasted the connection's deadline.
		_ = q.conn.SetDeadline(time.Now().Add(3 * time.Second))
		_ = q.execute("quit")
		q.Close()
		if proc.WaitGone(h.PID, h.PIDStart, 3*time.Second) {
			return nil
		}
	}
	if err := proc.KillWait(h.PID, h.PIDStart, 10*time.Second); err != nil {
		return fmt.Errorf("kill qemu: %w", err)
	}
	return nil
}

// Cleanup implements vmm.Driver: it removes the disk, token, sockets and
// pidfile. The VM's directory (and the console log the daemon keeps there)
// belongs to the caller.
func (d *Driver) Cleanup(ctx context.Context, h vmm.Handle) error {
	if d.Alive(h) {
		return fmt.Errorf("cleanup: qemu pid %d still running", h.PID)
	}
	if h.Dir == "" {
		return nil
	}
	for _, p := range []string{h.DiskPath, h.DiskPath + ".tmp", h.TokenPath, h.TokenPath + ".tmp", h.AgentSocket,
		h.DataSocket, h.ControlSocket, h.ConsoleStream, filepath.Join(h.Dir, filePID), filepath.Join(h.Dir, fileStderr)} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cleanup: %w", err)
		}
	}
	return nil
}

// KVMUsable reports whether /dev/kvm can be opened, answers the KVM API and
// is backed by hardware virtualization (kvm_intel or kvm_amd). Some nested
// hosts expose a software /dev/kvm (e.g. kvm_pvm) that opens fine but cannot
// run an unmodified guest kernel; "auto" must not pick it (set accel = "kvm"
// to force it).
func KVMUsable() bool {
	hw := false
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			hw = true
		}
	}
	if !hw {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	return errno == 0 && v == 12
}

// FindProcesses implements vmm.ProcessFinder. hearth's QEMU processes are
// named "hearth-<id>" (-name) and write their pidfile into their VM's
// directory, so the command line alone says which VM directory a process
// works for, from the moment it exists: a daemon killed while QEMU starts
// finds it again. Both processes of a QEMU that is still daemonizing are
// listed.
func (d *Driver) FindProcesses(vmsDir string) (map[string][]vmm.Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	found := map[string][]vmm.Process{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		args, err := proc.Cmdline(pid)
		if err != nil || len(args) < 3 || !strings.Contains(filepath.Base(args[0]), "qemu") {
			continue // gone meanwhile, a zombie, or not QEMU
		}
		dir, ok := vmDirOf(args, pid, vmsDir)
		if !ok {
			continue
		}
		start, err := proc.StartTime(pid)
		if err != nil {
			continue // gone meanwhile
		}
		found[dir] = append(found[dir], vmm.Process{PID: pid, Start: start})
	}
	return found, nil
}

// KillProcess implements vmm.ProcessFinder.
func (d *Driver) KillProcess(p vmm.Process) error {
	if err := proc.KillWait(p.PID, p.Start, 10*time.Second); err != nil {
		return fmt.Errorf("kill qemu: %w", err)
	}
	return nil
}

// vmDirOf returns the name of the VM directory under vmsDir that a hearth
// QEMU command line (of process pid) writes its pidfile into.
func vmDirOf(args []string, pid int, vmsDir string) (string, bool) {
	var named bool
	var pidfile string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-name":
			named = strings.HasPrefix(args[i+1], "hearth-") && len(args[i+1]) > len("hearth-")
		case "-pidfile":
			pidfile = args[i+1]
		}
	}
	if !named || pidfile == "" {
		return "", false
	}
	if !filepath.IsAbs(pidfile) {
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		if err != nil {
			return "", false
		}
		pidfile = filepath.Join(cwd, pidfile)
	}
	rel, err := filepath.Rel(filepath.Clean(vmsDir), filepath.Clean(pidfile))
	if err != nil {
		return "", false
	}
	dir, file, ok := strings.Cut(rel, string(filepath.Separator))
	if !ok || file != filePID || dir == ".." || dir == "." {
		return "", false
	}
	return dir, true
}
