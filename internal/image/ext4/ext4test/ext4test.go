// Package ext4test makes small ext4 images for the tests of code that reads
// them: files written below a directory, formatted with `mkfs.ext4 -d` (no
// mount, no root), then changed in place with `debugfs -w` scripts.
package ext4test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/image/ext4"
)

// File is one file system object of a test image.
type File struct {
	Path string
	Mode fs.FileMode // permissions (+ fs.ModeSetuid...) for files
	Data []byte      // regular file contents
	Link string      // symlink target ("" = not a symlink)
}

// RequireTools skips the test without e2fsprogs.
func RequireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

// Materialize writes the files below root (parents made as needed).
func Materialize(t *testing.T, root string, files []File) {
	t.Helper()
	for _, e := range files {
		dst := filepath.Join(root, filepath.FromSlash(e.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if e.Link != "" {
			if err := os.Symlink(e.Link, dst); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(dst, e.Data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, e.Mode); err != nil {
			t.Fatal(err)
		}
	}
}

// Mkfs makes an ext4 image of sizeMiB from the tree, as the image builder
// does (mkfs.ext4 -d, no mount), with the given volume label.
func Mkfs(t *testing.T, img, tree string, sizeMiB int64, label string) {
	t.Helper()
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(sizeMiB << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", tree, img)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

// DebugfsWrite runs a debugfs script read-write on an image and fails
// the test on any error debugfs reports (on stderr, since it exits 0).
func DebugfsWrite(t *testing.T, img, script string) {
	t.Helper()
	cmdFile := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(cmdFile, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("debugfs", "-w", "-f", cmdFile, img)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -w: %v\n%s", err, stderr.String())
	}
	if lines := ext4.DebugfsMessages(stderr.Bytes()); len(lines) > 0 {
		t.Fatalf("debugfs -w %q: %s", script, strings.Join(lines, "; "))
	}
}
