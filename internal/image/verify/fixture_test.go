package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4"
	"github.com/hearth-project/hearth/internal/image/ext4/ext4test"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
)

// vfEntry is one file system object of a synthetic test image.
type vfEntry struct {
	path  string
	mode  fs.FileMode // permissions (+ fs.ModeSetuid...) for files
	data  []byte      // regular file contents
	link  string      // symlink target ("" = not a symlink)
	claim bool        // add a files claim for it
	// resolvesTo names the entry a claimed symlink leads to.
	resolvesTo string
}

// vfAgent is the fixture agent binary (any bytes do: nothing runs it).
var vfAgent = []byte("\x7fELF hearth-agent fixture v1.4.0\n" + strings.Repeat("agent-code ", 300))

// vfTestdata reads a file of testdata.
func vfTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// vfImageInfo renders image.json as the builder would.
func vfImageInfo(t *testing.T, profile, role string, ports []int, agentVersion string) []byte {
	t.Helper()
	data, err := json.MarshalIndent(image.ImageInfo{
		SchemaVersion: image.ManifestSchemaVersion, Profile: profile, Role: role, RequiredPorts: ports,
		AgentVersion: agentVersion, AgentSHA256: fsutil.SHA256Hex(string(vfAgent)),
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(data, '\n')
}

// vfBrowserTree is a small "browser" root: merged /usr (/lib, /bin are
// symlinks), the agent and its unit (absolute link through /lib), x11vnc
// and its unit (relative link), dpkg status, global npm packages, users and
// a symlink chain to a binary.
func vfBrowserTree(t *testing.T) []vfEntry {
	return []vfEntry{
		{path: "/lib", link: "usr/lib"},
		{path: "/bin", link: "usr/bin"},
		{path: image.GuestAgentPath, mode: 0o755, data: vfAgent},
		{path: image.GuestImageInfoPath, mode: 0o644, data: vfImageInfo(t, "browser", "browser", []int{5900}, "1.4.0")},
		{path: "/usr/lib/systemd/system/hearth-agent.service", mode: 0o644, data: vfTestdata(t, "hearth-agent.service")},
		{path: "/usr/lib/systemd/system/x11vnc.service", mode: 0o644, data: vfTestdata(t, "x11vnc.service")},
		{path: "/etc/systemd/system/multi-user.target.wants/hearth-agent.service", link: "/lib/systemd/system/hearth-agent.service"},
		{path: "/etc/systemd/system/graphical.target.wants/x11vnc.service", link: "../../../../usr/lib/systemd/system/x11vnc.service"},
		{path: "/usr/lib/systemd/system/xvfb.service", mode: 0o644, data: []byte("[Service]\nExecStart=/usr/bin/Xvfb :0\n")},
		{path: "/etc/systemd/system/x11vnc.service.requires/xvfb.service", link: "/usr/lib/systemd/system/xvfb.service"},
		{path: "/var/lib/dpkg/status", mode: 0o644, data: vfTestdata(t, "status")},
		{path: "/usr/local/lib/node_modules/foo/package.json", mode: 0o644, data: []byte(`{"name": "foo", "version": "1.2.3"}` + "\n")},
		{path: "/usr/lib/node_modules/@hearth/cli/package.json", mode: 0o644, data: []byte(`{"name": "@hearth/cli", "version": "0.3.0"}` + "\n")},
		{path: "/etc/passwd", mode: 0o644, data: vfTestdata(t, "passwd")},
		{path: "/home/hearth/.profile", mode: 0o644, data: []byte("export PATH\n")},
		{path: "/usr/bin/x11vnc", mode: 0o755, data: []byte("fake x11vnc binary\n"), claim: true},
		{path: "/usr/bin/vnc-wrapper", link: "x11vnc"},
		{path: "/usr/local/bin/vncserver", link: "/bin/vnc-wrapper", claim: true, resolvesTo: "/usr/bin/x11vnc"},
		{path: "/usr/bin/xdotool", mode: 0o755, data: []byte("fake xdotool\n"), claim: true},
		{path: "/usr/bin/sudo-fixture", mode: fs.ModeSetuid | 0o755, data: []byte("setuid fixture\n"), claim: true},
		{path: "/etc/hearth/config", mode: 0o640, data: []byte("secret=1\n"), claim: true},
	}
}

// vfMinimalTree is a busybox-style root whose init respawns the agent.
func vfMinimalTree(t *testing.T) []vfEntry {
	return []vfEntry{
		{path: "/bin/busybox", mode: 0o755, data: []byte("fake busybox\n")},
		{path: "/sbin/init", link: "/bin/busybox"},
		{path: "/etc/inittab", mode: 0o644, data: vfTestdata(t, "inittab")},
		{path: image.GuestAgentPath, mode: 0o755, data: vfAgent},
		{path: image.GuestImageInfoPath, mode: 0o644, data: vfImageInfo(t, "minimal", "minimal", []int{}, "1.4.0")},
	}
}

// vfBrowserManifest describes vfBrowserTree (digests filled in by
// vfBuild).
func vfBrowserManifest() *image.Manifest {
	return &image.Manifest{
		SchemaVersion: image.ManifestSchemaVersion, Profile: "browser", Role: "browser", RequiredPorts: []int{5900},
		Agent: image.AgentManifest{Version: "1.4.0", SHA256: fsutil.SHA256Hex(string(vfAgent)), Path: image.GuestAgentPath},
		Units: []image.UnitClaim{
			{Name: "hearth-agent.service", WantedBy: "multi-user.target"},
			{Name: "x11vnc.service", WantedBy: "graphical.target"},
			{Name: "xvfb.service", WantedBy: "x11vnc.service"}, // a .requires link
		},
		Packages: []image.PackageClaim{{Name: "libc6", Version: "2.36-9+deb12u4"}, {Name: "x11vnc", Version: "0.9.16-9"}},
		NPM:      []image.PackageClaim{{Name: "@hearth/cli", Version: "0.3.0"}, {Name: "foo", Version: "1.2.3"}},
		Users:    []image.UserClaim{{Name: "hearth", UID: 1000, Home: "/home/hearth"}, {Name: "root", UID: 0, Home: "/root"}},
	}
}

// vfMinimalManifest describes vfMinimalTree.
func vfMinimalManifest() *image.Manifest {
	return &image.Manifest{
		SchemaVersion: image.ManifestSchemaVersion, Profile: "minimal", Role: "minimal", RequiredPorts: []int{},
		Agent: image.AgentManifest{Version: "1.4.0", SHA256: fsutil.SHA256Hex(string(vfAgent)), Path: image.GuestAgentPath},
	}
}

// vfFiles converts entries to the files of an ext4 test image.
func vfFiles(entries []vfEntry) []ext4test.File {
	files := make([]ext4test.File, len(entries))
	for i, e := range entries {
		files[i] = ext4test.File{Path: e.path, Mode: e.mode, Data: e.data, Link: e.link}
	}
	return files
}

// vfBuild makes an image directory (vmlinux, initrd.img, rootfs.ext4,
// manifest.json) from the entries, completing m with the digests and a
// files claim for every entry marked claim.
func vfBuild(t *testing.T, entries []vfEntry, m *image.Manifest) (string, *image.Manifest) {
	t.Helper()
	ext4test.RequireTools(t)
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	ext4test.Materialize(t, tree, vfFiles(entries))
	dir := filepath.Join(work, "image")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ext4test.Mkfs(t, filepath.Join(dir, image.RootfsFile), tree, 32, image.RootfsLabel)
	for _, name := range []string{image.KernelFile, image.InitrdFile} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("fake "+name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m.Files = append(m.Files, vfFileClaims(t, entries)...)
	vfRedigest(t, dir, m)
	return dir, m
}

// vfFileClaims claims every entry marked claim (a symlink by the contents
// and mode of the file it resolves to).
func vfFileClaims(t *testing.T, entries []vfEntry) []image.FileClaim {
	byPath := map[string]vfEntry{}
	for _, e := range entries {
		byPath[e.path] = e
	}
	var claims []image.FileClaim
	for _, e := range entries {
		if !e.claim {
			continue
		}
		target := e
		if e.link != "" {
			target = byPath[e.resolvesTo]
		}
		claims = append(claims, image.FileClaim{Path: e.path, SHA256: fsutil.SHA256Hex(string(target.data)), Mode: target.mode, Size: int64(len(target.data))})
	}
	return claims
}

// vfRedigest records the image files' sizes and digests in m, as the
// builder does, and writes manifest.json.
func vfRedigest(t *testing.T, dir string, m *image.Manifest) {
	t.Helper()
	for _, f := range []struct {
		name string
		sha  *string
		size *int64
	}{
		{image.KernelFile, &m.Kernel.SHA256, &m.Kernel.Size},
		{image.InitrdFile, &m.Initrd.SHA256, &m.Initrd.Size},
		{image.RootfsFile, &m.Rootfs.SHA256, &m.Rootfs.Size},
	} {
		st, err := fsutil.StatFile(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		*f.sha, *f.size = st.SHA256, st.Size
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, image.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// vfCopy copies an image directory and its manifest.
func vfCopy(t *testing.T, dir string, m *image.Manifest) (string, *image.Manifest) {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := fsutil.CopyFile(filepath.Join(dir, e.Name()), filepath.Join(dst, e.Name()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var cp image.Manifest
	if err := json.Unmarshal(data, &cp); err != nil {
		t.Fatal(err)
	}
	return dst, &cp
}

// vfHostFile writes a host file for a debugfs `write` and returns its path.
func vfHostFile(t *testing.T, data []byte, mode fs.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// vfReplace is a debugfs script replacing an image file's contents with
// data (mode kept).
func vfReplace(t *testing.T, p string, data []byte, mode fs.FileMode) string {
	host := vfHostFile(t, data, mode)
	return fmt.Sprintf("rm %s\nwrite %s %s\nsif %s mode 0%o\n", p, host, p, p, 0o100000|unixBits(mode))
}

// unixBits renders an fs.FileMode's permission and special bits in octal.
func unixBits(m fs.FileMode) uint32 { return ext4.ModeBits(m) }

// vfVerify runs Image and fails the test on an error.
func vfVerify(t *testing.T, dir string, m *image.Manifest) *Report {
	t.Helper()
	r, err := Image(context.Background(), dir, m)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r
}

// vfSubjects lists "kind subject" of every claim.
func vfSubjects(claims []ClaimResult) []string {
	var out []string
	for _, c := range claims {
		out = append(out, c.Kind+" "+c.Subject)
	}
	return out
}

// vfSameSet reports whether a and b hold the same strings.
func vfSameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
