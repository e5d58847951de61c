package build

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// requireDebootstrap skips unless the debootstrap builder can run: root,
// not -short, HEARTH_TEST_DEBOOTSTRAP=1 (it downloads about 60 MB from the
// Debian mirror and takes a minute or two), and the tools installed.
func requireDebootstrap(t *testing.T) {
	t.Helper()
	switch {
	case testing.Short():
		t.Skip("skipping debootstrap build in -short mode")
	case os.Getenv("HEARTH_TEST_DEBOOTSTRAP") != "1":
		t.Skip("skipping debootstrap build: set HEARTH_TEST_DEBOOTSTRAP=1 (needs root and the Debian mirror; takes minutes)")
	case os.Geteuid() != 0:
		t.Skip("skipping debootstrap build: needs root (chroot, mounts)")
	}
	requireIntegration(t)
	requireTools(t, "debootstrap", "chroot", "cp")
}

// tinySpec is minbase + systemd + one small package + one enabled unit.
const tinySpec = `name: tiny
role: workspace
base:
  kind: debootstrap
packages: [hello]
users:
  - {name: hearth, uid: 1000, shell: /bin/bash}
files:
  - path: /etc/systemd/system/tiny.service
    mode: "0644"
    content: |
      [Service]
      ExecStart=/usr/bin/hello
      [Install]
      WantedBy=multi-user.target
  - path: /home/hearth/note
    mode: "0600"
    owner: hearth
    content: hi
units:
  enable: [tiny.service]
key_files: [/usr/bin/hello]
ports: []
size_mib: 768
`

func TestBuildDebootstrapTiny(t *testing.T) {
	requireDebootstrap(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	spec, err := spec.Parse([]byte(tinySpec), "tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		Spec:         spec,
		AgentBinary:  buildStubAgent(t),
		AgentVersion: "test-0.0.1",
		CacheDir:     testCacheDir(t),
		OutputDir:    t.TempDir(),
	}
	res := timedBuild(ctx, t, "tiny debootstrap build", opts)
	m := res.Manifest
	checkTinyManifest(t, &m)
	checkTinyRootfs(t, res.RootfsPath)
	if _, err := os.Stat(res.LogPath); err != nil {
		t.Errorf("build log: %v", err)
	}

	other := opts
	other.OutputDir = t.TempDir()
	again := timedBuild(ctx, t, "tiny rebuild (fresh output dir, cached base tree)", other)
	if again.Digest != res.Digest {
		t.Errorf("same spec, different digests %s %s", res.Digest, again.Digest)
	}
	if !slices.Equal(again.Manifest.Packages, m.Packages) || !slices.Equal(again.Manifest.Units, m.Units) || !slices.Equal(again.Manifest.Files, m.Files) {
		t.Errorf("rebuild claims differ:\n%+v\n%+v", m, again.Manifest)
	}
	// Same spec, same host, same day: the builder pins everything it can,
	// so the file system is byte-identical (see images/README.md).
	if again.Manifest.Rootfs.SHA256 != m.Rootfs.SHA256 {
		t.Errorf("rootfs.ext4 differs between two builds of the same spec: %s vs %s", m.Rootfs.SHA256, again.Manifest.Rootfs.SHA256)
	}
}

// checkTinyManifest checks the claims of the tiny image.
func checkTinyManifest(t *testing.T, m *image.Manifest) {
	t.Helper()
	var hello, systemd bool
	for _, p := range m.Packages {
		hello = hello || p.Name == "hello" && p.Version != ""
		systemd = systemd || p.Name == "systemd"
	}
	if !hello || !systemd || !slices.IsSortedFunc(m.Packages, func(a, b image.PackageClaim) int { return strings.Compare(a.Name, b.Name) }) {
		t.Errorf("packages (hello %v, systemd %v, sorted?): %v", hello, systemd, m.Packages)
	}
	for _, want := range []image.UnitClaim{{Name: image.GuestAgentUnit, WantedBy: "multi-user.target"}, {Name: "tiny.service", WantedBy: "multi-user.target"}} {
		if !slices.Contains(m.Units, want) {
			t.Errorf("units %v lack %v", m.Units, want)
		}
	}
	for _, u := range m.Units {
		if slices.Contains(defaultMasks, u.Name) {
			t.Errorf("masked unit %s still enabled", u.Name)
		}
	}
	paths := map[string]image.FileClaim{}
	for _, f := range m.Files {
		paths[f.Path] = f
	}
	if a := paths[image.GuestAgentPath]; a.SHA256 != m.Agent.SHA256 || a.Mode != 0o755 {
		t.Errorf("agent claim %+v (agent sha %s)", a, m.Agent.SHA256)
	}
	if paths["/usr/bin/hello"].SHA256 == "" || paths["/home/hearth/note"].Mode != 0o600 {
		t.Errorf("file claims %v", m.Files)
	}
	if !slices.Equal(m.Users, []image.UserClaim{{Name: "hearth", UID: 1000, Home: "/home/hearth"}}) {
		t.Errorf("users %v", m.Users)
	}
	if m.SpecDigest == "" || len(m.RequiredPorts) != 0 {
		t.Errorf("spec digest %q ports %v", m.SpecDigest, m.RequiredPorts)
	}
}

// checkTinyRootfs reads the ext4 image with debugfs.
func checkTinyRootfs(t *testing.T, img string) {
	t.Helper()
	link := debugfsRead(t, img, "stat /etc/systemd/system/multi-user.target.wants/"+image.GuestAgentUnit)
	if !strings.Contains(link, "Type: symlink") || !strings.Contains(link, "/etc/systemd/system/"+image.GuestAgentUnit) {
		t.Errorf("agent unit link:\n%s", link)
	}
	if s := debugfsRead(t, img, "stat /usr/bin/hello"); !strings.Contains(s, "Type: regular") || !strings.Contains(s, "mtime: 0x65920080") {
		t.Errorf("/usr/bin/hello missing or timestamps not pinned:\n%s", s)
	}
	if s := debugfsRead(t, img, "stat /home/hearth/note"); !strings.Contains(s, "User:  1000") {
		t.Errorf("/home/hearth/note not owned by hearth:\n%s", s)
	}
	if s := debugfsRead(t, img, "stat /etc/systemd/system/serial-getty@ttyS0.service"); !strings.Contains(s, "Fast link dest: \"/dev/null\"") {
		t.Errorf("serial getty not masked:\n%s", s)
	}
	for _, p := range []string{"/var/lib/apt/lists/lock", "/usr/sbin/policy-rc.d"} {
		if s := debugfsRead(t, img, "stat "+p); !strings.Contains(s, "File not found") {
			t.Errorf("%s left in the image", p)
		}
	}
	if s := debugfsRead(t, img, "cat /etc/machine-id"); strings.TrimSpace(strings.TrimPrefix(s, strings.SplitN(s, "\n", 2)[0])) != "" {
		t.Errorf("machine-id not empty: %q", s)
	}
}

func TestBuildDebootstrapUnknownPackage(t *testing.T) {
	requireDebootstrap(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	spec, err := spec.Parse([]byte(strings.Replace(tinySpec, "packages: [hello]", "packages: [hello, nosuchpkg]", 1)), "bad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	_, err = Image(ctx, Options{
		Spec: spec, AgentBinary: buildStubAgent(t), AgentVersion: "test",
		CacheDir: testCacheDir(t), OutputDir: out,
	})
	want := `build tiny: phase packages: package "nosuchpkg": E: Unable to locate package nosuchpkg`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("failed build left directory %s", e.Name())
		}
	}
	if left := mountsUnder(out); len(left) > 0 {
		t.Errorf("mounts left behind: %v", left)
	}
	logs, _ := filepath.Glob(filepath.Join(out, ".build-tiny-*.log"))
	if len(logs) != 1 {
		t.Fatalf("build logs %v", logs)
	}
	if data, _ := os.ReadFile(logs[0]); !strings.Contains(string(data), "Unable to locate package nosuchpkg") {
		t.Error("build log lacks apt's error")
	}
}

func TestChrootMountsAlwaysUnmounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
	requireTools(t, "chroot")
	tree := t.TempDir()
	c := &chroot{dir: tree, log: &strings.Builder{}}
	if err := c.mount(); err != nil {
		t.Fatal(err)
	}
	if got := mountsUnder(tree); len(got) != len(chrootMounts) {
		t.Errorf("mounted %v", got)
	}
	if err := c.unmount(); err != nil {
		t.Fatal(err)
	}
	if got := mountsUnder(tree); len(got) != 0 {
		t.Fatalf("still mounted: %v", got)
	}
	if err := c.unmount(); err != nil {
		t.Fatalf("second unmount: %v", err)
	}
	// removeTree refuses nothing once unmounted and deletes the tree.
	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
}
