package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/diskspace"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vault"
	"github.com/hearth-project/hearth/internal/vmm/firecracker"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
	"github.com/hearth-project/hearth/web"
)

// Check is one line of `hearth doctor`.
type Check struct {
	Name   string
	Status string // OK, WARN or FAIL
	Detail string
	Fix    string
}

func ok(name, detail string) Check { return Check{Name: name, Status: "OK", Detail: detail} }
func warn(name, detail, fix string) Check {
	return Check{Name: name, Status: "WARN", Detail: detail, Fix: fix}
}
func failc(name, detail, fix string) Check {
	return Check{Name: name, Status: "FAIL", Detail: detail, Fix: fix}
}

// Doctor inspects the host for everything hearth needs.
func Doctor(ctx context.Context, cfg config.Config) []Check {
	var out []Check
	if qemu.KVMUsable() {
		out = append(out, ok("kvm", "/dev/kvm usable: guests run with hardware acceleration"))
	} else {
		out = append(out, warn("kvm", "no hardware-backed /dev/kvm (kvm_intel/kvm_amd): QEMU guests run under TCG (slower); the Firecracker driver cannot run",
			"enable virtualization (or nested KVM) for this host and give hearth read-write access to /dev/kvm"))
	}
	out = append(out, checkQEMU(ctx, cfg)...)
	out = append(out, checkFirecracker(ctx, cfg)...)
	if khz, err := qemu.HostTSCkHz(); err == nil {
		out = append(out, ok("tsc", fmt.Sprintf("host TSC %d kHz (passed to TCG guests as tsc_early_khz)", khz)))
	} else {
		out = append(out, warn("tsc", "cannot read the host TSC frequency: "+err.Error(), "TCG guests may hang calibrating the TSC; check /proc/cpuinfo"))
	}
	out = append(out, checkStateDir(cfg)...)
	out = append(out, checkNetwork(ctx, cfg)...)
	out = append(out, checkImages(ctx, cfg))
	out = append(out, checkVault(cfg))
	out = append(out, checkVaultPlace(cfg)...)
	out = append(out, checkViewerKey(cfg))
	if reg, err := loadProviders(cfg); err != nil {
		out = append(out, failc("providers", err.Error(), "fix the provider definition it names"))
	} else {
		out = append(out, ok("providers", strings.Join(reg.Names(), ", ")))
	}
	if err := web.NoVNCBuilt(); err != nil {
		out = append(out, failc("viewer", "the browser viewer page is not in this binary: "+err.Error(),
			"run make web (needs node and npm), then rebuild hearth"))
	} else {
		detail := "noVNC " + web.NoVNCVersion() + " embedded"
		if cfg.Viewer.PublicURL != "" {
			detail += "; links on " + cfg.Viewer.PublicURL
		} else if cfg.Viewer.TrustForwardedHeaders {
			detail += "; links from trusted X-Forwarded-* headers"
		}
		out = append(out, ok("viewer", detail))
	}
	out = append(out, checkOpenFiles(cfg))
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			out = append(out, ok("listen", cfg.Listen+" (loopback only)"))
		} else {
			out = append(out, warn("listen", cfg.Listen+" is reachable from other hosts",
				"keep the API on loopback behind a TLS-terminating proxy unless you mean it"))
		}
	}
	return out
}

// checkFreeSpace reports the state dir's free space against
// state_dir_min_free, below which the daemon is not ready and refuses new
// VMs.
func checkFreeSpace(cfg config.Config) Check {
	u, err := diskspace.Of(cfg.StateDir)
	if err != nil {
		return warn("free disk", err.Error(), "check the state dir's file system")
	}
	detail := fmt.Sprintf("%s free under %s", diskspace.Bytes(u.Free), u.Path)
	if u.Inodes > 0 {
		detail += fmt.Sprintf(", %d inodes", u.FreeInodes)
	}
	if why := u.Low(uint64(cfg.StateDirMinFree)); why != "" {
		return warn("free disk", why+": /readyz answers 503 and new VMs are refused until there is room",
			"free space (or inodes) on the state dir's file system, or move state_dir")
	}
	if u.Free < 5<<30 {
		return warn("free disk", detail, "VM overlays grow as guests write; keep 5 GiB or more free")
	}
	return ok("free disk", detail)
}

// checkFirecracker reports the Firecracker binary, the jailer and how
// per-VM disks would be cloned. Missing pieces fail only when the
// firecracker driver is the configured one.
func checkFirecracker(ctx context.Context, cfg config.Config) []Check {
	using := cfg.VM.Driver == "firecracker"
	missing := func(name, detail, fix string) Check {
		if using {
			return failc(name, detail, fix)
		}
		return warn(name, detail+" (needed only for the firecracker driver)", fix)
	}
	var out []Check
	if using && !qemu.KVMUsable() {
		out = append(out, failc("firecracker", "vm.driver is firecracker but this host has no hardware-backed /dev/kvm",
			"run hearth with the firecracker driver on a KVM host, or set vm.driver = \"qemu\""))
	}
	fc := cfg.Firecracker
	if bin, err := exec.LookPath(fc.Binary); err != nil {
		out = append(out, missing("firecracker", fc.Binary+" not found",
			"install a Firecracker release (v1.16) binary and set firecracker.binary"))
	} else {
		ver, _ := exec.CommandContext(ctx, bin, "--version").Output()
		first := strings.SplitN(strings.TrimSpace(string(ver)), "\n", 2)[0]
		out = append(out, ok("firecracker", bin+" "+first))
	}
	if j := fc.Jailer; j.Binary == "" {
		if using {
			out = append(out, warn("jailer", "VMs run without the jailer",
				"set firecracker.jailer.binary, uid and gid to chroot and confine every VM"))
		}
	} else if bin, err := exec.LookPath(j.Binary); err != nil {
		out = append(out, missing("jailer", j.Binary+" not found", "install the jailer from the same Firecracker release"))
	} else {
		out = append(out, ok("jailer", fmt.Sprintf("%s: VMs chrooted as %d:%d", bin, j.UID, j.GID)))
	}
	if fc.Kernel == "" {
		if using {
			out = append(out, warn("guest kernel", "VMs boot their image's Debian kernel, which cannot find Firecracker's virtio-mmio devices",
				"set firecracker.kernel to a Firecracker guest vmlinux (virtio-mmio command-line devices, vsock, ext4 built in)"))
		}
	} else if _, err := os.Stat(fc.Kernel); err != nil {
		out = append(out, missing("guest kernel", "firecracker.kernel: "+err.Error(), "point firecracker.kernel at a Firecracker guest vmlinux"))
	} else {
		out = append(out, ok("guest kernel", fc.Kernel))
	}
	out = append(out, checkDiskCloning(cfg))
	return out
}

// checkDiskCloning says how the Firecracker driver would clone disks in
// the state directory.
func checkDiskCloning(cfg config.Config) Check {
	dir := cfg.VMsPath()
	if _, err := os.Stat(dir); err != nil {
		dir = cfg.StateDir
	}
	if _, err := os.Stat(dir); err != nil {
		return warn("disk cloning", "state dir "+cfg.StateDir+" does not exist yet; cannot probe", "run hearth serve once")
	}
	method, err := firecracker.ProbeClone(dir)
	if err != nil {
		return warn("disk cloning", err.Error(), "make the state dir writable by hearth")
	}
	if cfg.Firecracker.DiskCloning != "auto" && cfg.Firecracker.DiskCloning != method {
		if cfg.Firecracker.DiskCloning == firecracker.CloneReflink {
			return failc("disk cloning", "firecracker.disk_cloning is reflink but "+dir+" cannot reflink",
				"put the state dir on btrfs or XFS (reflink=1), or set disk_cloning = \"auto\"")
		}
		method = cfg.Firecracker.DiskCloning
	}
	if method == firecracker.CloneReflink {
		return ok("disk cloning", "firecracker disks: reflink in "+dir+" (constant time and space per VM)")
	}
	return warn("disk cloning", "firecracker disks: sparse copy in "+dir+" (each VM copies the image's data; QEMU uses qcow2 overlays and is unaffected)",
		"put the state dir on btrfs or XFS (reflink=1) for constant-cost Firecracker disks")
}

func checkQEMU(ctx context.Context, cfg config.Config) []Check {
	var out []Check
	bin, err := exec.LookPath(cfg.QEMU.Binary)
	if err != nil {
		return append(out, failc("qemu", cfg.QEMU.Binary+" not found", "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils"))
	}
	ver, _ := exec.CommandContext(ctx, bin, "--version").Output()
	machines, _ := exec.CommandContext(ctx, bin, "-machine", "help").Output()
	first := strings.SplitN(strings.TrimSpace(string(ver)), "\n", 2)[0]
	if !strings.Contains(string(machines), "microvm") {
		out = append(out, failc("qemu", first+": no microvm machine type", "install a QEMU with -M microvm (Debian's qemu-system-x86)"))
	} else {
		out = append(out, ok("qemu", first+" (microvm available)"))
	}
	if _, err := exec.LookPath(cfg.QEMU.Img); err != nil {
		out = append(out, failc("qemu-img", cfg.QEMU.Img+" not found", "apt-get install -y qemu-utils"))
	} else {
		out = append(out, ok("qemu-img", "qcow2 overlays per VM: disk cost does not grow with image size"))
	}
	return out
}

func checkStateDir(cfg config.Config) []Check {
	var out []Check
	st, err := os.Stat(cfg.StateDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		out = append(out, warn("state dir", cfg.StateDir+" does not exist yet", "it is created (mode 0700) by 'hearth serve'"))
		return out
	case err != nil:
		return append(out, failc("state dir", err.Error(), "check the path and its parents"))
	}
	mode := st.Mode().Perm()
	sys, _ := st.Sys().(*syscall.Stat_t)
	switch {
	case sys != nil && int(sys.Uid) != os.Geteuid():
		out = append(out, failc("state dir", fmt.Sprintf("%s is owned by uid %d, hearth runs as %d", cfg.StateDir, sys.Uid, os.Geteuid()),
			"chown it to the user hearth runs as"))
	case mode&0o077 != 0:
		out = append(out, warn("state dir", fmt.Sprintf("%s has mode %#o: other users can read VM tokens and sockets", cfg.StateDir, mode),
			"chmod 0700 "+cfg.StateDir))
	default:
		out = append(out, ok("state dir", fmt.Sprintf("%s mode %#o", cfg.StateDir, mode)))
	}
	out = append(out, checkFreeSpace(cfg))
	if reflinkSupported(cfg.StateDir) {
		out = append(out, ok("copy-on-write", "qcow2 overlays (qemu); the filesystem also supports reflink clones"))
	} else {
		out = append(out, ok("copy-on-write", "qcow2 overlays (qemu); no reflink on this filesystem, so raw-disk drivers fall back to sparse copies"))
	}
	return out
}

// reflinkSupported tries a FICLONE between two scratch files in dir.
func reflinkSupported(dir string) bool {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}

// checkVault says where the vault's master key comes from.
func checkVault(cfg config.Config) Check {
	if os.Getenv(vault.EnvKey) != "" {
		if _, err := vault.LoadKeyring(cfg.VaultKeyPath(), os.Environ()); err != nil {
			return failc("vault", err.Error(), "give "+vault.EnvKey+" as base64 of 32 bytes, and no key file")
		}
		return ok("vault", "master key from "+vault.EnvKey)
	}
	path := cfg.VaultKeyPath()
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return warn("vault", "no key file yet at "+path, "hearth serve makes it on first start; back it up then")
	}
	kr, err := vault.LoadKeyring(path, os.Environ())
	if err != nil {
		return failc("vault", err.Error(), "restore the key file from a backup (mode 0600)")
	}
	return ok("vault", fmt.Sprintf("%s: %d key(s), current %s", path, len(kr.IDs()), kr.CurrentID()))
}

func checkImages(ctx context.Context, cfg config.Config) Check {
	const fix = "hearth image build --profile minimal"
	if _, err := os.Stat(cfg.DatabasePath()); err != nil {
		return warn("images", "no database yet, so no images", fix)
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return failc("images", "open store: "+err.Error(), "check "+cfg.DatabasePath())
	}
	defer st.Close()
	imgs, err := st.ListImages(ctx)
	if err != nil {
		return failc("images", err.Error(), "check "+cfg.DatabasePath())
	}
	if len(imgs) == 0 {
		return warn("images", "no images built: no VM can start", fix)
	}
	var names []string
	for _, im := range imgs {
		for _, p := range []string{im.KernelPath, im.InitrdPath, im.RootfsPath} {
			if _, err := os.Stat(p); err != nil {
				return failc("images", fmt.Sprintf("image %s (%s) is missing %s", im.Name, short(im.ID), filepath.Base(p)), fix)
			}
		}
		names = append(names, im.Name+"@"+short(im.ID))
	}
	return ok("images", strings.Join(names, ", ")+" (kernel, initrd and rootfs present)")
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
