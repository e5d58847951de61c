package build

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hearth-project/hearth/internal/image"
)

func TestParseDpkgStatus(t *testing.T) {
	status := "Package: b\nStatus: install ok installed\nVersion: 2\n\nPackage: a\nStatus: install ok installed\nVersion: 1:1.0-1\nDescription: x\n more\n\nPackage: c\nStatus: deinstall ok config-files\nVersion: 3\n"
	got := parseDpkgStatus([]byte(status))
	want := []image.PackageClaim{{Name: "a", Version: "1:1.0-1"}, {Name: "b", Version: "2"}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestResolveInTree(t *testing.T) {
	tree := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/chromium", "etc/alternatives"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"bin":                         "usr/bin",
		"usr/bin/x":                   "/etc/alternatives/x",
		"etc/alternatives/x":          "/usr/lib/chromium/chromium",
		"usr/bin/loop":                "loop",
		"usr/bin/escape":              "../../../../etc/passwd",
		"usr/lib/chromium/chromium-l": "chromium",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(tree, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "usr/lib/chromium/chromium"), []byte("elf"), 0o755); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"/bin/x":                       "/usr/lib/chromium/chromium",
		"/usr/bin/escape":              "/etc/passwd",
		"/usr/lib/chromium/chromium-l": "/usr/lib/chromium/chromium",
	} {
		if got, err := resolveInTree(tree, in, true); err != nil || got != want {
			t.Errorf("resolve %s = %q, %v; want %s", in, got, err, want)
		}
	}
	if _, err := resolveInTree(tree, "/usr/bin/loop", true); err == nil {
		t.Error("symlink loop resolved")
	}
	c, err := fileClaim(tree, "/bin/x")
	if err != nil || c.Path != "/usr/lib/chromium/chromium" || c.Mode != 0o755 || c.Size != 3 {
		t.Errorf("fileClaim = %+v, %v", c, err)
	}
}
