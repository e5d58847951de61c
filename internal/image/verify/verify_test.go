package verify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4/ext4test"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
)

func TestVerifyBrowserFixtureOK(t *testing.T) {
	dir, m := vfBuild(t, vfBrowserTree(t), vfBrowserManifest())
	r := vfVerify(t, dir, m)
	if !r.OK || len(r.Failed()) != 0 {
		t.Fatalf("fixture does not verify:\n%s", r)
	}
	want := []string{
		"digest vmlinux", "digest initrd.img", "digest rootfs.ext4",
		"agent /usr/bin/hearth-agent",
		"file /usr/bin/x11vnc", "file /usr/local/bin/vncserver", "file /usr/bin/xdotool",
		"file /usr/bin/sudo-fixture", "file /etc/hearth/config",
		"unit hearth-agent.service", "unit x11vnc.service", "unit xvfb.service",
		"package libc6", "package x11vnc",
		"npm @hearth/cli", "npm foo",
		"user hearth", "user root",
		"port-role browser",
	}
	if got := vfSubjects(r.Claims); !vfSameSet(got, want) {
		t.Errorf("claims checked:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range r.Claims {
		if c.Detail == "" {
			t.Errorf("%s %s: no detail", c.Kind, c.Subject)
		}
		t.Logf("ok  %s", c)
	}
	if s := r.String(); s != fmt.Sprintf("all %d claims hold", len(want)) {
		t.Errorf("String() = %q", s)
	}
	vncserver := vfClaim(t, r, ClaimFile, "/usr/local/bin/vncserver")
	if !strings.Contains(vncserver.Detail, "→ /usr/bin/x11vnc") {
		t.Errorf("symlinked claim detail %q does not name the file it resolved to", vncserver.Detail)
	}
}

func TestVerifyMinimalFixtureOK(t *testing.T) {
	dir, m := vfBuild(t, vfMinimalTree(t), vfMinimalManifest())
	r := vfVerify(t, dir, m)
	if !r.OK {
		t.Fatalf("minimal fixture does not verify:\n%s", r)
	}
	want := []string{"digest vmlinux", "digest initrd.img", "digest rootfs.ext4", "agent /usr/bin/hearth-agent", "unit /etc/inittab", "port-role minimal"}
	if got := vfSubjects(r.Claims); !vfSameSet(got, want) {
		t.Errorf("claims checked: %q, want %q", got, want)
	}

	broken, bm := vfCopy(t, dir, m)
	inittab := strings.ReplaceAll(string(vfTestdata(t, "inittab")), "::respawn:", "::once:")
	ext4test.DebugfsWrite(t, filepath.Join(broken, image.RootfsFile), vfReplace(t, "/etc/inittab", []byte(inittab), 0o644))
	vfRedigest(t, broken, bm)
	vfExpectOnly(t, vfVerify(t, broken, bm), ClaimUnit, "/etc/inittab", "no respawn entry for /usr/bin/hearth-agent")
}

// vfBreak is one way of making a claim false.
type vfBreak struct {
	name    string
	script  func(t *testing.T) string                         // debugfs -w script for the image ("" = none)
	mutate  func(t *testing.T, dir string, m *image.Manifest) // after the image change and re-digest
	kind    string
	subject string
	detail  string // substring of the failed claim's detail
}

func vfBrowserBreaks() []vfBreak {
	status := func(t *testing.T, edit func(string) string) string {
		return vfReplace(t, "/var/lib/dpkg/status", []byte(edit(string(vfTestdata(t, "status")))), 0o644)
	}
	return []vfBreak{
		{name: "binary removed", script: vfScript("rm /usr/bin/xdotool"),
			kind: ClaimFile, subject: "/usr/bin/xdotool", detail: "missing from the image"},
		{name: "unit disabled", script: vfScript("rm /etc/systemd/system/multi-user.target.wants/hearth-agent.service"),
			kind: ClaimUnit, subject: "hearth-agent.service", detail: "/etc/systemd/system/multi-user.target.wants/hearth-agent.service is missing"},
		{name: "unit file removed (dangling link)", script: vfScript("rm /usr/lib/systemd/system/x11vnc.service"),
			kind: ClaimUnit, subject: "x11vnc.service", detail: "→ ../../../../usr/lib/systemd/system/x11vnc.service is dangling (/usr/lib/systemd/system/x11vnc.service does not exist)"},
		{name: "agent unit file removed (absolute link through /lib)", script: vfScript("rm /usr/lib/systemd/system/hearth-agent.service"),
			kind: ClaimUnit, subject: "hearth-agent.service", detail: "→ /lib/systemd/system/hearth-agent.service is dangling"},
		{name: "required unit removed", script: vfScript("rm /etc/systemd/system/x11vnc.service.requires/xvfb.service"),
			kind: ClaimUnit, subject: "xvfb.service", detail: "/etc/systemd/system/x11vnc.service.wants/xvfb.service is missing"},
		{name: "unit masked", script: vfScript("symlink /etc/systemd/system/x11vnc.service /dev/null"),
			kind: ClaimUnit, subject: "x11vnc.service", detail: "masked: /etc/systemd/system/x11vnc.service → /dev/null"},
		{name: "wants link replaced by a file", script: func(t *testing.T) string {
			link := "/etc/systemd/system/multi-user.target.wants/hearth-agent.service"
			return fmt.Sprintf("rm %s\nwrite %s %s\n", link, vfHostFile(t, vfTestdata(t, "hearth-agent.service"), 0o644), link)
		}, kind: ClaimUnit, subject: "hearth-agent.service", detail: "is a regular file, not a symlink"},
		{name: "package stanza removed", script: func(t *testing.T) string {
			return status(t, func(s string) string { return s[:strings.Index(s, "Package: x11vnc")] })
		}, kind: ClaimPackage, subject: "x11vnc", detail: "not installed (dpkg status)"},
		{name: "package version differs", script: func(t *testing.T) string {
			return status(t, func(s string) string {
				return strings.Replace(s, "Version: 2.36-9+deb12u4", "Version: 2.36-9+deb12u3", 1)
			})
		}, kind: ClaimPackage, subject: "libc6", detail: "version 2.36-9+deb12u3 installed, manifest says 2.36-9+deb12u4"},
		{name: "package half removed", script: func(t *testing.T) string {
			return status(t, func(s string) string {
				return strings.Replace(s, "Package: x11vnc\nStatus: install ok installed", "Package: x11vnc\nStatus: deinstall ok config-files", 1)
			})
		}, kind: ClaimPackage, subject: "x11vnc", detail: `not installed (dpkg status "deinstall ok config-files")`},
		{name: "file tampered (same size)", script: func(t *testing.T) string {
			return vfReplace(t, "/etc/hearth/config", []byte("secret=2\n"), 0o640)
		}, kind: ClaimFile, subject: "/etc/hearth/config", detail: "sha256 " + fsutil.SHA256Hex("secret=2\n")[:12] + "… differs from manifest " + fsutil.SHA256Hex("secret=1\n")[:12] + "…"},
		{name: "setuid bit dropped", script: vfScript("sif /usr/bin/sudo-fixture mode 0100755"),
			kind: ClaimFile, subject: "/usr/bin/sudo-fixture", detail: "mode 0755 differs from manifest 4755"},
		{name: "symlink chain broken", script: vfScript("rm /usr/bin/vnc-wrapper"),
			kind: ClaimFile, subject: "/usr/local/bin/vncserver", detail: "dangling symlink (/usr/bin/vnc-wrapper does not exist)"},
		{name: "agent replaced", script: func(t *testing.T) string {
			return vfReplace(t, image.GuestAgentPath, []byte("a different agent\n"), 0o755)
		}, kind: ClaimAgent, subject: image.GuestAgentPath, detail: "sha256 " + fsutil.SHA256Hex("a different agent\n")[:12] + "… differs from manifest"},
		{name: "agent removed", script: vfScript("rm " + image.GuestAgentPath),
			kind: ClaimAgent, subject: image.GuestAgentPath, detail: "missing from the image"},
		{name: "agent not executable", script: vfScript("sif " + image.GuestAgentPath + " mode 0100644"),
			kind: ClaimAgent, subject: image.GuestAgentPath, detail: "not executable (mode 0644)"},
		{name: "agent version in image differs", script: func(t *testing.T) string {
			return vfReplace(t, image.GuestImageInfoPath, vfImageInfo(t, "browser", "browser", []int{5900}, "1.3.9"), 0o644)
		}, kind: ClaimAgent, subject: image.GuestAgentPath, detail: `/etc/hearth/image.json says agent version "1.3.9", manifest "1.4.0"`},
		{name: "npm version differs", script: func(t *testing.T) string {
			return vfReplace(t, "/usr/local/lib/node_modules/foo/package.json", []byte(`{"name": "foo", "version": "1.2.4"}`), 0o644)
		}, kind: ClaimNPM, subject: "foo", detail: "version 1.2.4 installed (/usr/local/lib/node_modules/foo/package.json), manifest says 1.2.3"},
		{name: "npm package removed", script: vfScript("rm /usr/lib/node_modules/@hearth/cli/package.json"),
			kind: ClaimNPM, subject: "@hearth/cli", detail: "not installed globally (no /usr/local/lib/node_modules/@hearth/cli/package.json or /usr/lib/node_modules/@hearth/cli/package.json)"},
		{name: "user home differs", script: func(t *testing.T) string {
			passwd := strings.Replace(string(vfTestdata(t, "passwd")), ":/home/hearth:", ":/srv/hearth:", 1)
			return vfReplace(t, "/etc/passwd", []byte(passwd), 0o644)
		}, kind: ClaimUser, subject: "hearth", detail: "home /srv/hearth differs from manifest /home/hearth"},
		{name: "rootfs digest differs", mutate: func(t *testing.T, dir string, m *image.Manifest) { m.Rootfs.SHA256 = fsutil.SHA256Hex("other") },
			kind: ClaimDigest, subject: image.RootfsFile, detail: "differs from manifest " + fsutil.SHA256Hex("other")[:12] + "…"},
		{name: "kernel missing", mutate: func(t *testing.T, dir string, m *image.Manifest) {
			if err := os.Remove(filepath.Join(dir, image.KernelFile)); err != nil {
				t.Fatal(err)
			}
		}, kind: ClaimDigest, subject: image.KernelFile, detail: "missing"},
		{name: "browser without port 5900", mutate: func(t *testing.T, dir string, m *image.Manifest) { m.RequiredPorts = []int{} },
			kind: ClaimPortRole, subject: "browser", detail: "role browser requires port 5900"},
		{name: "browser without x11vnc claim", mutate: func(t *testing.T, dir string, m *image.Manifest) {
			m.Files = slices.DeleteFunc(m.Files, func(f image.FileClaim) bool { return strings.Contains(f.Path, "vnc") })
		}, kind: ClaimPortRole, subject: "browser", detail: "role browser requires a file claim for its x11vnc binary"},
	}
}

// vfScript is a fixed debugfs script.
func vfScript(lines ...string) func(*testing.T) string {
	return func(*testing.T) string { return strings.Join(lines, "\n") + "\n" }
}

func TestVerifyNamesExactlyTheBrokenClaim(t *testing.T) {
	dir, m := vfBuild(t, vfBrowserTree(t), vfBrowserManifest())
	for _, b := range vfBrowserBreaks() {
		t.Run(b.name, func(t *testing.T) {
			broken, bm := vfCopy(t, dir, m)
			if b.script != nil {
				ext4test.DebugfsWrite(t, filepath.Join(broken, image.RootfsFile), b.script(t))
				vfRedigest(t, broken, bm) // the manifest matches the image; only the claim is false
			}
			if b.mutate != nil {
				b.mutate(t, broken, bm)
			}
			vfExpectOnly(t, vfVerify(t, broken, bm), b.kind, b.subject, b.detail)
		})
	}
}

// vfExpectOnly checks that exactly one claim failed, the named one, with a
// detail containing detail.
func vfExpectOnly(t *testing.T, r *Report, kind, subject, detail string) {
	t.Helper()
	failed := r.Failed()
	if r.OK || len(failed) != 1 || failed[0].Kind != kind || failed[0].Subject != subject {
		t.Fatalf("want exactly %s %s to fail, got OK=%v:\n%s", kind, subject, r.OK, r)
	}
	if !strings.Contains(failed[0].Detail, detail) {
		t.Errorf("detail %q lacks %q", failed[0].Detail, detail)
	}
	line := failed[0].String()
	if !strings.Contains(r.String(), "\n"+line) {
		t.Errorf("String() does not name the failed claim on its own line:\n%s", r)
	}
	t.Logf("%s", line)
}

// vfClaim finds one claim of a report.
func vfClaim(t *testing.T, r *Report, kind, subject string) ClaimResult {
	t.Helper()
	for _, c := range r.Claims {
		if c.Kind == kind && c.Subject == subject {
			return c
		}
	}
	t.Fatalf("no %s %s claim in report:\n%v", kind, subject, vfSubjects(r.Claims))
	return ClaimResult{}
}

func TestVerifyRejectsInjectedPaths(t *testing.T) {
	evil := filepath.Join(t.TempDir(), "evil")
	tree := append(vfBrowserTree(t),
		vfEntry{path: "/usr/bin/quote-link", link: "x\"\ndump <2> " + evil + "\n"},
	)
	dir, m := vfBuild(t, tree, vfBrowserManifest())
	before, err := fsutil.SHA256File(filepath.Join(dir, image.RootfsFile))
	if err != nil {
		t.Fatal(err)
	}
	m.Files = append(m.Files,
		image.FileClaim{Path: "/etc/passwd\ndump <2> " + evil, Mode: 0o644},
		image.FileClaim{Path: `/etc/passwd" "` + evil, Mode: 0o644},
		image.FileClaim{Path: "etc/passwd", Mode: 0o644},
		image.FileClaim{Path: "/usr/bin/quote-link", Mode: 0o755},
	)
	m.Units = append(m.Units, image.UnitClaim{Name: "x.service\ndump <2> " + evil, WantedBy: "multi-user.target"}, image.UnitClaim{Name: "../../../passwd", WantedBy: "multi-user.target"})
	m.NPM = append(m.NPM, image.PackageClaim{Name: "../../../../etc", Version: "1"})
	r := vfVerify(t, dir, m)
	want := map[string]string{
		"file /etc/passwd\ndump <2> " + evil: "invalid path: ",
		"file /etc/passwd\" \"" + evil:       "invalid path: ",
		"file etc/passwd":                    "is not absolute",
		"file /usr/bin/quote-link":           "contains a double quote",
		"unit x.service\ndump <2> " + evil:   "invalid unit name",
		"unit ../../../passwd":               "invalid unit name",
		"npm ../../../../etc":                "invalid npm package name",
	}
	for _, c := range r.Failed() {
		key := c.Kind + " " + c.Subject
		if w, ok := want[key]; !ok || !strings.Contains(c.Detail, w) {
			t.Errorf("unexpected failure %q (want detail containing %q)", c.String(), w)
		}
		delete(want, key)
	}
	for k := range want {
		t.Errorf("claim %q did not fail", k)
	}
	if _, err := os.Stat(evil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("injected debugfs command ran: %s exists (%v)", evil, err)
	}
	if after, _ := fsutil.SHA256File(filepath.Join(dir, image.RootfsFile)); after != before {
		t.Error("rootfs.ext4 changed during verification")
	}
}

func TestVerifyUnverifiable(t *testing.T) {
	dir, m := vfBuild(t, vfMinimalTree(t), vfMinimalManifest())
	ctx := context.Background()
	if _, err := Image(ctx, dir, nil); err == nil {
		t.Error("nil manifest: no error")
	}
	if _, err := Image(ctx, t.TempDir(), m); err == nil || !strings.Contains(err.Error(), image.RootfsFile) {
		t.Errorf("empty directory: err = %v", err)
	}
	garbage := t.TempDir()
	if err := os.WriteFile(filepath.Join(garbage, image.RootfsFile), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Image(ctx, garbage, m)
	if err == nil || !strings.Contains(err.Error(), "while trying to open") {
		t.Errorf("not an ext4 image: err = %v", err)
	}
	t.Logf("not ext4: %v", err)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Image(cancelled, dir, m); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := Image(ctx, dir, m); err == nil || !strings.Contains(err.Error(), "debugfs") {
		t.Errorf("without debugfs: err = %v", err)
	}
}

// TestVerifyTiming verifies 500 file claims (in 50 directories, some
// behind symlinks) and 300 Debian packages.
func TestVerifyTiming(t *testing.T) {
	const nFiles, nPackages = 500, 300
	tree := vfBrowserTree(t)
	var status strings.Builder
	status.Write(vfTestdata(t, "status"))
	m := vfBrowserManifest()
	for i := 0; i < nPackages; i++ {
		fmt.Fprintf(&status, "\nPackage: pkg%03d\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.%d-1\nDescription: filler\n", i, i)
		m.Packages = append(m.Packages, image.PackageClaim{Name: fmt.Sprintf("pkg%03d", i), Version: fmt.Sprintf("1.%d-1", i)})
	}
	tree[slices.IndexFunc(tree, func(e vfEntry) bool { return e.path == "/var/lib/dpkg/status" })].data = []byte(status.String())
	for i := 0; i < nFiles; i++ {
		data := []byte(strings.Repeat(fmt.Sprintf("file %d ", i), 100+i*3))
		tree = append(tree, vfEntry{path: fmt.Sprintf("/usr/share/t%02d/f%03d", i%50, i), mode: 0o644, data: data, claim: true})
	}
	dir, m := vfBuild(t, tree, m)
	start := time.Now()
	r := vfVerify(t, dir, m)
	elapsed := time.Since(start)
	if !r.OK {
		t.Fatalf("timing fixture does not verify:\n%s", r)
	}
	t.Logf("verified %d claims (%d file claims, %d packages) in %s", len(r.Claims), len(m.Files), len(m.Packages), elapsed.Round(time.Millisecond))
	if elapsed > 10*time.Second {
		t.Errorf("verification took %s", elapsed)
	}
}
