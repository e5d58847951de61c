package build

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
)

// TestBootImageDir boots a built image the way the QEMU driver does
// (-M microvm, fw_cfg token, virtio-serial agent channel; TCG unless
// HEARTH_TEST_ACCEL says otherwise) with the real agent inside, performs
// the agent handshake with the role's required ports and waits for ready.
// It is a manual check for images that take minutes to build:
//
//	HEARTH_TEST_BOOT_IMAGE=/var/lib/hearth/images/browser-<digest> \
//	  go test -run TestBootImageDir -v ./internal/image/build/
//
// HEARTH_TEST_QEMU_CPU sets -cpu (e.g. "max"). For the browser role it also checks that x11vnc listens on 0.0.0.0:5900
// and that hearth-browser starts Chromium under Xvfb.
func TestBootImageDir(t *testing.T) {
	dir := os.Getenv("HEARTH_TEST_BOOT_IMAGE")
	if dir == "" {
		t.Skip("set HEARTH_TEST_BOOT_IMAGE to an image directory to boot it")
	}
	requireTools(t, "qemu-system-x86_64", "qemu-img")
	m, err := image.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm := startImageVM(ctx, t, dir)
	marker := vm.waitConsole(t, "hearth-agent starting", 4*time.Minute)
	t.Logf("%s: console shows %q after %s", m.Profile, "hearth-agent starting", marker.Round(100*time.Millisecond))

	conn, err := agentapi.Dial(ctx, vm.agentSock)
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer hcancel()
	sess, err := agentapi.Handshake(hctx, conn, vm.token, agentapi.Config{RequiredPorts: m.RequiredPorts})
	if err != nil {
		t.Fatalf("handshake: %v\n%s", err, vm.console())
	}
	defer sess.Close()
	t.Logf("%s: agent %s handshake done after %s", m.Profile, sess.Hello().AgentVersion, time.Since(vm.started).Round(100*time.Millisecond))
	for ev := range sess.Events() {
		if ev.Type == agentapi.TypePortReady {
			t.Logf("%s: port %d ready after %s", m.Profile, ev.Port, time.Since(vm.started).Round(100*time.Millisecond))
		}
		if ev.Type == agentapi.TypeReady {
			t.Logf("%s: ready (ports %v) after %s", m.Profile, ev.Ports, time.Since(vm.started).Round(100*time.Millisecond))
			break
		}
	}
	if len(m.Packages) == 0 {
		return // busybox image: no systemd
	}
	execLog(ctx, t, sess, "systemctl", "is-system-running")
	execLog(ctx, t, sess, "systemd-analyze")
	execLog(ctx, t, sess, "sh", "-c", "systemctl list-units --failed --no-legend; systemctl list-jobs --no-legend | head")
	switch m.Role {
	case "browser":
		checkBrowserGuest(ctx, t, sess)
	case "workspace":
		out := execLog(ctx, t, sess, "runuser", "-u", "hearth", "--", "sh", "-lc", "node --version; npm --version; git --version; claude --version; codex --version; gemini --version; ulimit -n")
		if !strings.Contains(out, "v22.") {
			t.Errorf("node 22 not on the user's PATH:\n%s", out)
		}
	}
}

// checkBrowserGuest checks x11vnc's socket and starts Chromium.
func checkBrowserGuest(ctx context.Context, t *testing.T, sess *agentapi.Session) {
	tcp := execLog(ctx, t, sess, "cat", "/proc/net/tcp")
	if !strings.Contains(tcp, "00000000:170C 00000000:0000 0A") {
		t.Errorf("nothing listens on 0.0.0.0:5900")
	}
	execLog(ctx, t, sess, "/usr/local/bin/hearth-browser", "data:text/html,<h1>hearth</h1>")
	time.Sleep(15 * time.Second)
	ps := execLog(ctx, t, sess, "sh", "-c", "pgrep -u hearth -a chromium | head -3; tail -5 /home/hearth/.cache/hearth-browser.log")
	if !strings.Contains(ps, "chromium") {
		t.Errorf("chromium is not running as hearth")
	}
}

// execLog runs a command through the agent and logs its output.
func execLog(ctx context.Context, t *testing.T, sess *agentapi.Session, argv ...string) string {
	t.Helper()
	res, err := sess.Exec(ctx, agentapi.ExecRequest{Argv: argv, Timeout: 60 * time.Second})
	if err != nil {
		t.Errorf("exec %v: %v", argv, err)
		return ""
	}
	out := string(res.Stdout) + string(res.Stderr)
	t.Logf("$ %s (exit %d)\n%s", strings.Join(argv, " "), res.ExitCode, out)
	return out
}

// imageVM is a QEMU process booted from an image directory.
type imageVM struct {
	dir, agentSock, serial string
	token                  []byte
	started                time.Time
}

// startImageVM boots the image with an overlay disk, the token in fw_cfg
// and the agent channel on a Unix socket; QEMU is killed when the test
// ends.
func startImageVM(ctx context.Context, t *testing.T, dir string) *imageVM {
	t.Helper()
	vm := &imageVM{dir: t.TempDir()}
	vm.agentSock = filepath.Join(vm.dir, "agent.sock")
	vm.serial = filepath.Join(vm.dir, "console.log")
	tok, err := agentapi.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	vm.token = tok
	tokenFile := filepath.Join(vm.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(agentapi.FormatToken(tok)), 0o600); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(vm.dir, "disk.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(dir, image.RootfsFile), "-F", "raw", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	khz, err := qemu.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-M", "microvm", "-m", "1024", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + vm.serial,
		"-kernel", filepath.Join(dir, image.KernelFile), "-initrd", filepath.Join(dir, image.InitrdFile),
		"-append", fmt.Sprintf("console=ttyS0 root=/dev/vda rw quiet panic=-1 tsc_early_khz=%d", khz),
		"-drive", "id=root,file=" + overlay + ",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-fw_cfg", "name=" + image.FwCfgTokenName + ",file=" + tokenFile,
		"-chardev", "socket,id=agent,path=" + vm.agentSock + ",server=on,wait=off",
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name=hearth.agent",
	}
	args = append(args, testAccelArgs(t)...)
	if cpu := os.Getenv("HEARTH_TEST_QEMU_CPU"); cpu != "" {
		args = append(args, "-cpu", cpu) // e.g. max: Claude Code's binary needs more than qemu64
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	vm.started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Logf("console:\n%s", vm.console())
	})
	return vm
}

// console returns the console log so far.
func (vm *imageVM) console() string {
	data, _ := os.ReadFile(vm.serial)
	return string(data)
}

// waitConsole waits for marker on the console and returns when it came.
func (vm *imageVM) waitConsole(t *testing.T, marker string, timeout time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(vm.console(), marker) {
			return time.Since(vm.started)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%q not on the console after %s", marker, timeout)
	return 0
}
