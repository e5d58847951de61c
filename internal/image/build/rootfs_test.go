package build

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/kernel"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// requireTools skips the test unless all the named programs are installed.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func testRootfsSpec(t *testing.T) rootfsSpec {
	t.Helper()
	spec, err := spec.Embedded("minimal")
	if err != nil {
		t.Fatal(err)
	}
	spec.SizeMiB = 16
	digest := fsutil.SHA256Hex("test")
	return rootfsSpec{
		Spec:      spec,
		Busybox:   []byte("fake busybox"),
		Applets:   []string{"bin/sh", "bin/[", "bin/[[", "sbin/init", "usr/bin/env", "bin/busybox"},
		Agent:     []byte("fake agent"),
		ImageInfo: []byte(`{"profile":"minimal"}` + "\n"),
		UUID:      uuidFromDigest(digest, "rootfs-uuid"),
		HashSeed:  uuidFromDigest(digest, "rootfs-hash-seed"),
		Epoch:     reproducibleEpoch,
	}
}

// debugfsRead runs a read-only debugfs request against an image.
func debugfsRead(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, out)
	}
	return string(out)
}

func TestWriteRootfsReproducible(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	ctx := context.Background()
	var sums []string
	var img string
	for i := 0; i < 2; i++ {
		dir := t.TempDir()
		img = filepath.Join(dir, "rootfs.ext4")
		if err := writeRootfs(ctx, img, dir, testRootfsSpec(t)); err != nil {
			t.Fatal(err)
		}
		sum, err := fsutil.SHA256File(img)
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, sum)
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds from identical input differ: %s vs %s", sums[0], sums[1])
	}

	agent := debugfsRead(t, img, "stat "+image.GuestAgentPath)
	for _, want := range []string{"Mode:  0755", "User:     0   Group:     0", "ctime: 0x65920080", "mtime: 0x65920080"} {
		if !strings.Contains(agent, want) {
			t.Errorf("agent inode lacks %q:\n%s", want, agent)
		}
	}
	if s := debugfsRead(t, img, "stat /sbin/init"); !strings.Contains(s, `Fast link dest: "/bin/busybox"`) {
		t.Errorf("/sbin/init is not a link to /bin/busybox:\n%s", s)
	}
	if s := debugfsRead(t, img, "cat "+image.GuestImageInfoPath); !strings.Contains(s, `"profile":"minimal"`) {
		t.Errorf("image info: %s", s)
	}
	if s := debugfsRead(t, img, "cat /etc/inittab"); !strings.Contains(s, "::respawn:"+image.GuestAgentPath) {
		t.Errorf("inittab does not respawn the agent:\n%s", s)
	}
	if s := debugfsRead(t, img, "stat /tmp"); !strings.Contains(s, "Mode:  01777") {
		t.Errorf("/tmp mode:\n%s", s)
	}
	// The spec's user has its home, and only that is not root's.
	if s := debugfsRead(t, img, "stat /home/hearth"); !strings.Contains(s, "Mode:  0755") || !strings.Contains(s, "User:  1000   Group:  1000") {
		t.Errorf("/home/hearth:\n%s", s)
	}
	if s := debugfsRead(t, img, "stat /home"); !strings.Contains(s, "User:     0   Group:     0") {
		t.Errorf("/home:\n%s", s)
	}
	c := busyboxClaims(testRootfsSpec(t).Spec, []byte("fake agent"))
	if len(c.users) != 1 || c.users[0] != (image.UserClaim{Name: "hearth", UID: 1000, Home: "/home/hearth"}) {
		t.Errorf("user claims %+v", c.users)
	}
}

func TestDebugfsScriptRejectsOddPaths(t *testing.T) {
	tr := fsTree{}
	if err := tr.add(`/etc/we"ird`, fsEntry{mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	if _, err := debugfsScript(tr, 0); err == nil {
		t.Fatal("path with a quote accepted")
	}
}

func TestBusyboxTreeNeedsInit(t *testing.T) {
	s := testRootfsSpec(t)
	s.Applets = []string{"bin/sh"}
	if _, err := rootfsTree(s); err == nil {
		t.Fatal("busybox without an init applet accepted")
	}
	s = testRootfsSpec(t)
	s.Spec.Base.Kind = "debootstrap"
	if _, err := rootfsTree(s); err == nil || !strings.Contains(err.Error(), "unsupported base") {
		t.Fatalf("unknown base: err = %v", err)
	}
}

// testInitramfsSpec is an initramfs of the modules it loads, as the kernel
// package's testdata (modules.dep, modules.builtin) lists them, each module
// file a dummy.
func testInitramfsSpec(t *testing.T) initramfsSpec {
	t.Helper()
	modDir := t.TempDir()
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		if err := fsutil.CopyFile(filepath.Join("..", "kernel", "testdata", f), filepath.Join(modDir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db, err := kernel.LoadModuleDB(modDir)
	if err != nil {
		t.Fatal(err)
	}
	mods, _, err := db.Resolve(kernel.InitrdModules())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		p := filepath.Join(modDir, m.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module "+m.Name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return initramfsSpec{Busybox: []byte("fake busybox"), Release: "6.1.0-99-amd64", Modules: mods, ModDir: modDir, MTime: reproducibleEpoch}
}

func TestWriteInitramfs(t *testing.T) {
	spec := testInitramfsSpec(t)
	dir := t.TempDir()
	sumA, sizeA, err := writeInitramfs(filepath.Join(dir, "a.img"), spec)
	if err != nil {
		t.Fatal(err)
	}
	sumB, sizeB, err := writeInitramfs(filepath.Join(dir, "b.img"), spec)
	if err != nil {
		t.Fatal(err)
	}
	if sumA != sumB || sizeA != sizeB {
		t.Fatal("initramfs not deterministic")
	}
	f, err := os.Open(filepath.Join(dir, "a.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]newcEntry{}
	for _, e := range parseNewc(t, raw) {
		files[e.name] = e
	}
	for _, name := range []string{"init", "bin/busybox", "bin/switch_root", "bin/insmod", "dev/console", "newroot",
		"lib/modules/6.1.0-99-amd64/kernel/fs/ext4/ext4.ko", "lib/modules/6.1.0-99-amd64/kernel/drivers/firmware/qemu_fw_cfg.ko"} {
		if _, ok := files[name]; !ok {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	if _, ok := files[strings.TrimPrefix(image.GuestAgentPath, "/")]; ok {
		t.Error("the agent must not be in the initramfs")
	}
	initScript := string(files["init"].data)
	if files["init"].fields[1] != 0o100755 {
		t.Errorf("/init mode %o", files["init"].fields[1])
	}
	// Modules are loaded in dependency order.
	iRing := strings.Index(initScript, "load virtio_ring kernel/drivers/virtio/virtio_ring.ko")
	iBlk := strings.Index(initScript, "load virtio_blk kernel/drivers/block/virtio_blk.ko")
	iExt4 := strings.Index(initScript, "load ext4 kernel/fs/ext4/ext4.ko")
	iJbd2 := strings.Index(initScript, "load jbd2 kernel/fs/jbd2/jbd2.ko")
	if iRing < 0 || iBlk < iRing || iJbd2 < 0 || iExt4 < iJbd2 {
		t.Errorf("module load lines missing or out of order:\n%s", initScript)
	}
	for _, line := range strings.Split(initScript, "\n") {
		if strings.Contains(line, "echo ") && strings.Contains(line, "$*") && !strings.Contains(line, `"hearth-initramfs: $*"`) {
			t.Errorf("failure output without the hearth-initramfs prefix: %s", line)
		}
	}
}

// TestShellScriptsParse syntax-checks /init and every shell script of the
// embedded specs with busybox sh -n.
func TestShellScriptsParse(t *testing.T) {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("no busybox")
	}
	initScript, err := renderInit(testInitramfsSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	scripts := map[string]string{"init": string(initScript)}
	for _, name := range spec.Names() {
		spec, err := spec.Embedded(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range spec.Files {
			if strings.HasPrefix(f.Content, "#!/bin/sh") {
				scripts[name+":"+f.Path] = f.Content
			}
		}
	}
	if _, ok := scripts["minimal:/etc/init.d/rcS"]; !ok {
		t.Fatal("minimal spec has no /etc/init.d/rcS script")
	}
	for name, script := range scripts {
		cmd := exec.Command(DefaultBusybox, "sh", "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v\n%s", name, err, out)
		}
	}
}

func TestCheckStaticELF(t *testing.T) {
	if err := checkStaticELF([]byte("#!/bin/sh\n")); err == nil {
		t.Error("script accepted as static ELF")
	}
	if data, err := os.ReadFile(DefaultBusybox); err == nil {
		if err := checkStaticELF(data); err != nil {
			t.Errorf("%s: %v", DefaultBusybox, err)
		}
	}
	if data, err := os.ReadFile("/usr/bin/env"); err == nil {
		if err := checkStaticELF(data); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("/usr/bin/env (dynamic): err = %v", err)
		}
	}
}

func TestBuildRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		opts Options
		want string
	}{
		{Options{Profile: "nope", AgentBinary: "/a", AgentVersion: "1", OutputDir: "/o"}, `build nope: unknown image spec "nope"`},
		{Options{Profile: "minimal", AgentVersion: "1", OutputDir: "/o"}, "build minimal: no agent binary"},
		{Options{Profile: "minimal", AgentBinary: "/a", OutputDir: "/o"}, "build minimal: no agent version"},
		{Options{Profile: "minimal", AgentBinary: "/a", AgentVersion: "1"}, "build minimal: no output directory"},
	}
	for _, c := range cases {
		if _, err := Image(ctx, c.opts); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("Image(%+v) error %v, want prefix %q", c.opts, err, c.want)
		}
	}
}
