package build

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// sampleArchive writes a small archive with every supported entry type.
func sampleArchive(t *testing.T, withDevice bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := newCPIOWriter(&buf, 1704067200)
	steps := []func() error{
		func() error { return w.Dir("bin", 0o755) },
		func() error { return w.File("bin/busybox", 0o755, []byte("#!fake busybox\n")) },
		func() error { return w.Symlink("bin/sh", "busybox") },
		func() error { return w.Dir("etc", 0o700) },
		func() error { return w.File("etc/empty", 0o600, nil) },
		func() error { return w.File("/etc/odd-len", 0o644, []byte("12345")) }, // leading "/" is stripped
	}
	if withDevice {
		steps = append(steps,
			func() error { return w.Dir("dev", 0o755) },
			func() error { return w.CharDev("dev/console", 0o600, 5, 1) })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// newcEntry is a parsed newc header plus its data.
type newcEntry struct {
	name   string
	fields [13]uint64
	data   []byte
}

// parseNewc is an independent reader used to check the writer's output.
func parseNewc(t *testing.T, b []byte) []newcEntry {
	t.Helper()
	var out []newcEntry
	for off := 0; ; {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, b[off:off+6])
		}
		var e newcEntry
		for i := range e.fields {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			e.fields[i] = v
		}
		nameLen, size := int(e.fields[11]), int(e.fields[6])
		e.name = string(b[off+110 : off+110+nameLen-1])
		off = align4(off + 110 + nameLen)
		e.data = b[off : off+size]
		off = align4(off + size)
		out = append(out, e)
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

func TestCPIOWriterFormat(t *testing.T) {
	entries := parseNewc(t, sampleArchive(t, true))
	want := []struct {
		name string
		mode uint64
		data string
	}{
		{"bin", 0o040755, ""},
		{"bin/busybox", 0o100755, "#!fake busybox\n"},
		{"bin/sh", 0o120777, "busybox"},
		{"etc", 0o040700, ""},
		{"etc/empty", 0o100600, ""},
		{"etc/odd-len", 0o100644, "12345"},
		{"dev", 0o040755, ""},
		{"dev/console", 0o020600, ""},
		{"TRAILER!!!", 0, ""},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, w := range want {
		e := entries[i]
		if e.name != w.name || e.fields[1] != w.mode || string(e.data) != w.data {
			t.Errorf("entry %d = %q mode %o data %q; want %q %o %q", i, e.name, e.fields[1], e.data, w.name, w.mode, w.data)
		}
		if e.fields[2] != 0 || e.fields[3] != 0 {
			t.Errorf("%s: uid/gid %d/%d, want 0/0", e.name, e.fields[2], e.fields[3])
		}
		if w.name != "TRAILER!!!" && (e.fields[5] != 1704067200 || e.fields[0] != uint64(i+1)) {
			t.Errorf("%s: mtime %d ino %d; want fixed mtime and sequential inode", e.name, e.fields[5], e.fields[0])
		}
	}
	if c := entries[7]; c.fields[9] != 5 || c.fields[10] != 1 {
		t.Errorf("dev/console rdev %d:%d, want 5:1", c.fields[9], c.fields[10])
	}
}

func TestCPIOWriterDeterministic(t *testing.T) {
	a, b := sampleArchive(t, true), sampleArchive(t, true)
	if !bytes.Equal(a, b) {
		t.Fatal("identical input produced different archives")
	}
}

func TestCPIOWriterRejects(t *testing.T) {
	w := newCPIOWriter(&bytes.Buffer{}, 0)
	for _, name := range []string{"", "/", "../escape", "a/../b", "a//b"} {
		if err := w.File(name, 0o644, nil); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Dir("late", 0o755); err == nil {
		t.Error("write after Close accepted")
	}
}

func TestCPIOWriterHostCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed")
	}
	list := exec.Command(cpio, "-t", "--quiet")
	list.Stdin = bytes.NewReader(sampleArchive(t, true))
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	wantList := "bin\nbin/busybox\nbin/sh\netc\netc/empty\netc/odd-len\ndev\ndev/console\n"
	if string(out) != wantList {
		t.Errorf("cpio -t listed\n%s\nwant\n%s", out, wantList)
	}

	dir := t.TempDir()
	extract := exec.Command(cpio, "-i", "-d", "--quiet", "--no-absolute-filenames")
	extract.Dir = dir
	extract.Stdin = bytes.NewReader(sampleArchive(t, false)) // no device: works unprivileged
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "bin/busybox")); err != nil || string(data) != "#!fake busybox\n" {
		t.Errorf("bin/busybox = %q, %v", data, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "bin/busybox")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("bin/busybox mode %v, %v", st.Mode(), err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "etc/odd-len")); err != nil || string(data) != "12345" {
		t.Errorf("etc/odd-len = %q, %v", data, err)
	}
}

func TestWriteCPIOFromTreeOrdersParentsFirst(t *testing.T) {
	tr := fsTree{}
	for _, p := range []string{"/z/deep/file", "/a-b", "/a/b"} {
		if err := tr.add(p, fsEntry{mode: 0o644, data: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := writeCPIO(&buf, tr, 0); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range parseNewc(t, buf.Bytes()) {
		names = append(names, e.name)
	}
	got := strings.Join(names, " ")
	want := "a a-b a/b z z/deep z/deep/file TRAILER!!!"
	if got != want {
		t.Errorf("order %q, want %q", got, want)
	}
	if err := tr.add("/a/b/c", fsEntry{mode: 0o644}); err == nil {
		t.Error("adding below a regular file succeeded")
	}
	if err := tr.add("/a/b", fsEntry{mode: fs.ModeDir | 0o755}); err == nil {
		t.Error("replacing a file with a directory succeeded")
	}
}
