package build

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
)

// requireIntegration skips the test unless it can build and boot images:
// root, not -short, and the Debian tools present with apt lists available.
func requireIntegration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping image build + QEMU boot in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping image build + QEMU boot: needs root (apt-get download, QEMU)")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "debugfs", "e2fsck", "qemu-system-x86_64", "qemu-img", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping image build + QEMU boot: %s not installed", tool)
		}
	}
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skipf("skipping image build + QEMU boot: %s missing (apt-get install busybox-static)", DefaultBusybox)
	}
	if _, err := resolveKernelPackage(context.Background(), ""); err != nil {
		t.Skipf("skipping image build + QEMU boot: %v", err)
	}
}

// buildStubAgent compiles testdata/stubagent as a static binary.
func buildStubAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hearth-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/stubagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build stub agent: %v\n%s", err, out)
	}
	return bin
}

// testCacheDir is $HEARTH_TEST_CACHE_DIR (to reuse downloads between runs)
// or a fresh temporary directory (a cold build).
func testCacheDir(t *testing.T) string {
	if d := os.Getenv("HEARTH_TEST_CACHE_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}

func TestBuildAndBootMinimal(t *testing.T) {
	requireIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	opts := Options{
		Profile:      "minimal",
		AgentBinary:  buildStubAgent(t),
		AgentVersion: "test-0.0.1",
		CacheDir:     testCacheDir(t),
		OutputDir:    t.TempDir(),
	}
	res := timedBuild(ctx, t, "first build", opts)
	if res.Cached {
		t.Fatal("first build into an empty output dir reported Cached")
	}
	checkResult(t, res)

	again := timedBuild(ctx, t, "second build (same output dir)", opts)
	if !again.Cached || again.Dir != res.Dir || again.Digest != res.Digest {
		t.Fatalf("second build: Cached=%v dir=%s digest=%s; want cached %s", again.Cached, again.Dir, again.Digest, res.Dir)
	}

	other := opts
	other.OutputDir = t.TempDir()
	rebuilt := timedBuild(ctx, t, "rebuild (fresh output dir, warm cache)", other)
	checkReproducible(t, res.Manifest, rebuilt.Manifest)

	t.Run("boot", func(t *testing.T) { testBootWithToken(ctx, t, res) })
	t.Run("no-root-disk", func(t *testing.T) { testInitramfsFailure(ctx, t, res) })
}

func TestBuildUnknownKernelPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping apt look-up in -short mode")
	}
	if _, err := exec.LookPath("apt-cache"); err != nil {
		t.Skip("apt-cache not installed")
	}
	_, err := Image(context.Background(), Options{
		Profile: "minimal", AgentBinary: "/nonexistent", AgentVersion: "1",
		CacheDir: t.TempDir(), OutputDir: t.TempDir(),
		KernelPackage: "linux-image-0.0.0-0-nonexistent",
	})
	want := "build minimal: phase kernel: resolve linux-image-0.0.0-0-nonexistent: apt-cache"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v, want prefix %q", err, want)
	}
	t.Log(err)
}

// timedBuild runs Image, logging its progress output and duration.
func timedBuild(ctx context.Context, t *testing.T, what string, o Options) *Result {
	t.Helper()
	var log bytes.Buffer
	o.Log = &log
	start := time.Now()
	res, err := Image(ctx, o)
	t.Logf("%s: %s\n%s", what, time.Since(start).Round(time.Millisecond), log.String())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return res
}

// checkResult verifies the image directory layout and manifest.
func checkResult(t *testing.T, res *Result) {
	t.Helper()
	wantDir := "minimal-" + res.Digest[:16]
	if filepath.Base(res.Dir) != wantDir {
		t.Errorf("image dir %s, want .../%s", res.Dir, wantDir)
	}
	m, err := image.ReadManifest(res.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(res.Dir); err != nil {
		t.Errorf("verify: %v", err)
	}
	if m.Role != "minimal" || m.RequiredPorts == nil || len(m.RequiredPorts) != 0 {
		t.Errorf("role %q required_ports %#v", m.Role, m.RequiredPorts)
	}
	for _, mod := range []string{"virtio_mmio", "virtio_blk", "ext4", "virtio_console", "virtio_net", "qemu_fw_cfg"} {
		if !contains(m.Initrd.Modules, mod) {
			t.Errorf("initrd modules %v lack %s", m.Initrd.Modules, mod)
		}
	}
	if m.Rootfs.DiskSize >= m.Rootfs.Size {
		t.Errorf("rootfs not sparse: %d bytes allocated of %d", m.Rootfs.DiskSize, m.Rootfs.Size)
	}
	if st, err := os.Stat(res.Dir); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o755 {
		t.Errorf("image dir mode %v, want 0755", st.Mode())
	}
	entries, err := os.ReadDir(res.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "initrd.img manifest.json rootfs.ext4 vmlinux" {
		t.Errorf("image dir holds %q", got)
	}
	siblings, _ := os.ReadDir(filepath.Dir(res.Dir))
	for _, e := range siblings {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary directory %s left behind", e.Name())
		}
	}
	raw, _ := os.ReadFile(res.ManifestPath)
	t.Logf("manifest.json:\n%s", raw)
}

// checkReproducible compares two manifests of builds from identical inputs.
func checkReproducible(t *testing.T, a, b image.Manifest) {
	t.Helper()
	if a.BuiltAt.IsZero() || b.BuiltAt.IsZero() {
		t.Error("built_at not set")
	}
	a.BuiltAt, b.BuiltAt = time.Time{}, time.Time{}
	a.Rootfs.DiskSize, b.Rootfs.DiskSize = 0, 0 // depends on the host file system
	if fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", b) {
		t.Errorf("builds from identical inputs differ:\n%+v\n%+v", a, b)
	}
}

// testBootWithToken boots the image with a per-VM token in fw_cfg and waits
// for the stub agent to print it.
func testBootWithToken(ctx context.Context, t *testing.T, res *Result) {
	vmDir := t.TempDir()
	token := randomToken(t)
	tokenFile := filepath.Join(vmDir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(vmDir, "overlay.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", res.RootfsPath, "-F", "raw", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	args := []string{
		"-drive", "id=root,file=" + overlay + ",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-fw_cfg", "name=" + image.FwCfgTokenName + ",file=" + tokenFile,
	}
	marker := "HEARTH-TEST-AGENT-UP " + token
	b := bootVM(ctx, t, res, vmDir, args, marker, 60*time.Second)
	if !b.found {
		t.Fatalf("marker %q not in serial log after %s (qemu exited: %v)\n%s", marker, b.elapsed, b.exited, b.serial)
	}
	t.Logf("boot to agent marker (with token) in %s", b.elapsed.Round(time.Millisecond))
}

// testInitramfsFailure boots without a root disk: /init must report the
// reason on the console and power the machine off (QEMU exits).
func testInitramfsFailure(ctx context.Context, t *testing.T, res *Result) {
	vmDir := t.TempDir()
	b := bootVM(ctx, t, res, vmDir, nil, "hearth-initramfs: root device /dev/vda did not appear", 60*time.Second)
	if !b.found {
		t.Fatalf("no hearth-initramfs failure line after %s\n%s", b.elapsed, b.serial)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !b.hasExited() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !b.hasExited() {
		t.Errorf("QEMU still running 15s after the initramfs failure line: /init did not power off\n%s", b.serial)
	}
	t.Logf("failure reported after %s; qemu exited: %v", b.elapsed.Round(time.Millisecond), b.hasExited())
}

// bootRun is the outcome of bootVM.
type bootRun struct {
	found   bool
	exited  bool
	elapsed time.Duration
	serial  string
	done    chan struct{}
}

// hasExited reports whether QEMU has exited by now.
func (b *bootRun) hasExited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// bootVM starts QEMU (-M microvm, KVM if usable else TCG) on the image with
// the extra arguments and polls the serial log for marker until timeout or
// QEMU exits. QEMU is killed when the test ends.
func bootVM(ctx context.Context, t *testing.T, res *Result, vmDir string, extra []string, marker string, timeout time.Duration) *bootRun {
	t.Helper()
	khz, err := qemu.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	serialLog := filepath.Join(vmDir, "serial.log")
	args := []string{
		"-M", "microvm", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + serialLog,
		"-kernel", res.KernelPath, "-initrd", res.InitrdPath,
	}
	args = append(args, testAccelArgs(t)...)
	args = append(args, extra...)
	args = append(args, "-append", fmt.Sprintf("console=ttyS0 root=/dev/vda rw quiet tsc_early_khz=%d", khz))
	qctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(qctx, "qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start qemu: %v", err)
	}
	b := &bootRun{done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		cancel()
		<-b.done
		if s := strings.TrimSpace(stderr.String()); s != "" {
			t.Logf("qemu stderr: %s", s)
		}
	})
	deadline := time.After(timeout)
	for {
		data, _ := os.ReadFile(serialLog)
		b.serial, b.elapsed = string(data), time.Since(start)
		if strings.Contains(b.serial, marker) {
			b.found = true
			return b
		}
		select {
		case <-b.done:
			data, _ = os.ReadFile(serialLog)
			b.serial, b.exited = string(data), true
			b.found = strings.Contains(b.serial, marker)
			return b
		case <-deadline:
			return b
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// testAccelArgs picks QEMU's accelerator: $HEARTH_TEST_ACCEL ("kvm" or
// "tcg") if set; otherwise KVM with TCG fallback when the host has a
// hardware KVM backend, else TCG. A /dev/kvm alone is not enough: hosts that
// are themselves lightweight VMs may offer kvm_pvm (software "PVM" nested
// virtualisation), which opens fine but cannot run a stock Debian kernel
// (QEMU dies with "KVM internal error ... emulation failure" or fails to set
// MSRs) and -accel kvm -accel tcg does not fall back from that.
func testAccelArgs(t *testing.T) []string {
	t.Helper()
	accel := os.Getenv("HEARTH_TEST_ACCEL")
	if accel == "" {
		accel = "tcg"
		if hardwareKVM() {
			accel = "kvm"
		}
	}
	t.Logf("qemu accelerator: %s", accel)
	if accel == "kvm" {
		return []string{"-accel", "kvm", "-accel", "tcg"}
	}
	return []string{"-accel", accel}
}

// hardwareKVM reports whether /dev/kvm is usable and backed by kvm_intel or
// kvm_amd.
func hardwareKVM() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			return true
		}
	}
	return false
}

// randomToken returns a fresh hex token.
func randomToken(t *testing.T) string {
	buf := make([]byte, 16)
	if _, err := rand.Read(buf); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(buf)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
