package image

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// ext4LongName is a file name long enough that a symlink to it is "slow"
// (target stored in a data block, not in the inode).
var ext4LongName = strings.Repeat("n", 80)

// ext4TestImage builds an image exercising the access layer's edge cases.
func ext4TestImage(t *testing.T) *ext4Image {
	t.Helper()
	requireVerifyTools(t)
	tree := filepath.Join(t.TempDir(), "tree")
	vfMaterialize(t, tree, []vfEntry{
		{path: "/a/file", mode: 0o640, data: []byte("hello")},
		{path: "/a/" + ext4LongName, mode: 0o600, data: []byte("long")},
		{path: "/a/with space", mode: 0o644, data: []byte("s")},
		{path: "/a/new\nline", mode: 0o644, data: []byte("n")},
		{path: "/a/quote\"d", mode: 0o644, data: []byte("q")},
		{path: "/a/empty", mode: 0o644},
		{path: "/a/link", link: "file"},
		{path: "/a/abs", link: "/a/file"},
		{path: "/a/up", link: "../a/./file"},
		{path: "/dirlink", link: "a"},
		{path: "/long", link: "/a/" + ext4LongName},
		{path: "/loop1", link: "loop2"},
		{path: "/loop2", link: "/loop1"},
		{path: "/dangling", link: "/nope/file"},
		{path: "/escape", link: "../../../../../../a/file"},
		{path: "/hostlink", link: "/etc/hostname"},
		{path: "/emptylink", link: "a/.."},
		{path: "/through-file", link: "/a/file/x"},
	})
	img := filepath.Join(t.TempDir(), "img.ext4")
	vfMkfs(t, img, tree, 16)
	vfDebugfsWrite(t, img, "sif /a/file uid 4000000000\nsif /a/file gid 1234\n")
	im, err := openExt4Image(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func TestExt4Stat(t *testing.T) {
	im := ext4TestImage(t)
	ctx := context.Background()
	st, err := im.Stat(ctx, "/a/file")
	if err != nil {
		t.Fatal(err)
	}
	if st.Type != InodeRegular || st.Mode != 0o640 || st.Size != 5 || st.UID != 4000000000 || st.GID != 1234 || st.Ino == 0 {
		t.Errorf("stat /a/file = %+v", st)
	}
	if st, err := im.Stat(ctx, "/a"); err != nil || st.Type != InodeDir {
		t.Errorf("stat /a = %+v, %v", st, err)
	}
	for p, target := range map[string]string{"/a/link": "file", "/long": "/a/" + ext4LongName, "/escape": "../../../../../../a/file"} {
		st, err := im.Stat(ctx, p)
		if err != nil || st.Type != InodeSymlink || st.LinkTarget != target {
			t.Errorf("stat %s = %+v, %v; want symlink to %q", p, st, err, target)
		}
		if got, err := im.Readlink(ctx, p); err != nil || got != target {
			t.Errorf("readlink %s = %q, %v", p, got, err)
		}
	}
	if _, err := im.Readlink(ctx, "/a/file"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("readlink of a file: %v", err)
	}
	if _, err := im.Stat(ctx, "/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat /nope: %v", err)
	}
	if _, err := im.Stat(ctx, "/a/file/x"); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("stat /a/file/x: %v", err)
	}
	if st, err := im.Stat(ctx, "/a/with space"); err != nil || st.Size != 1 {
		t.Errorf("stat with space: %+v, %v", st, err)
	}
}

func TestExt4Resolve(t *testing.T) {
	im := ext4TestImage(t)
	ctx := context.Background()
	for p, want := range map[string]string{
		"/a/link": "/a/file", "/a/abs": "/a/file", "/a/up": "/a/file", "/dirlink/link": "/a/file",
		"/dirlink/../dirlink/up": "/a/file", "/escape": "/a/file", "/long": "/a/" + ext4LongName,
		"/a/file": "/a/file", "/": "/", "/..": "/", "/emptylink": "/", "/dirlink": "/a",
	} {
		got, _, err := im.Resolve(ctx, p)
		if err != nil || got != want {
			t.Errorf("resolve %s = %q, %v; want %q", p, got, err, want)
		}
	}
	for p, want := range map[string]error{
		"/loop1": syscall.ELOOP, "/dangling": fs.ErrNotExist, "/hostlink": fs.ErrNotExist,
		"/through-file": syscall.ENOTDIR, "/nope": fs.ErrNotExist,
	} {
		if _, _, err := im.Resolve(ctx, p); !errors.Is(err, want) {
			t.Errorf("resolve %s: err = %v, want %v", p, err, want)
		}
	}
}

func TestExt4ReadFileAndDir(t *testing.T) {
	im := ext4TestImage(t)
	ctx := context.Background()
	if data, err := im.ReadFile(ctx, "/dirlink/abs", 100); err != nil || string(data) != "hello" {
		t.Errorf("read /dirlink/abs = %q, %v", data, err)
	}
	if data, err := im.ReadFile(ctx, "/a/empty", 100); err != nil || len(data) != 0 {
		t.Errorf("read empty file = %q, %v", data, err)
	}
	if _, err := im.ReadFile(ctx, "/a/file", 4); err == nil {
		t.Error("read over the limit: no error")
	}
	if _, err := im.ReadFile(ctx, "/a", 1<<20); err == nil {
		t.Error("read of a directory: no error")
	}
	entries, err := im.ReadDir(ctx, "/dirlink")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	want := []string{"file", ext4LongName, "with space", "new\nline", "quote\"d", "empty", "link", "abs", "up"}
	if !vfSameSet(names, want) {
		t.Errorf("readdir names %q, want %q", names, want)
	}
	for _, e := range entries {
		if e.Name == "link" && e.Type != InodeSymlink || e.Name == "file" && (e.Type != InodeRegular || e.Size != 5 || e.Mode != 0o640) {
			t.Errorf("entry %+v", e)
		}
	}
	if _, err := im.ReadDir(ctx, "/a/file"); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("readdir of a file: %v", err)
	}
}

func TestExt4RejectsUnsafePaths(t *testing.T) {
	im := ext4TestImage(t)
	ctx := context.Background()
	evil := filepath.Join(t.TempDir(), "evil")
	for _, p := range []string{
		"/a/file\ndump <2> " + evil,
		"/a/file\rdump <2> " + evil,
		`/a/file" "` + evil,
		"/a/quote\"d",
		"a/file",
		"",
		"/a/\x00x",
		"/" + strings.Repeat("x", ext4MaxPathLen),
	} {
		if _, err := im.Stat(ctx, p); err == nil {
			t.Errorf("stat %q: no error", p)
		}
		if _, err := im.ReadFile(ctx, p, 100); err == nil {
			t.Errorf("read %q: no error", p)
		}
	}
	if _, err := os.Stat(evil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists: a debugfs command was injected", evil)
	}
}

func TestExt4Cancelled(t *testing.T) {
	im := ext4TestImage(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := im.Stat(ctx, "/a/file"); !errors.Is(err, context.Canceled) {
		t.Errorf("stat with a cancelled context: %v", err)
	}
}

func TestExt4ParseStat(t *testing.T) {
	out := "Inode: 27   Type: symlink    Mode:  0777   Flags: 0x0\n" +
		"Generation: 0    Version: 0x00000000:00000000\n" +
		"User: -294967296   Group:     7   Project:     0   Size: 8\n" +
		"Size of extra inode fields: 32\n" +
		"Fast link dest: \"a\"\nb\"c d\"\n"
	ino, needsTarget, ok, err := ext4ParseStat([]byte(out))
	if err != nil || !ok || needsTarget {
		t.Fatalf("parse: ok=%v needsTarget=%v err=%v", ok, needsTarget, err)
	}
	want := Inode{Ino: 27, Type: InodeSymlink, Kind: "symlink", Mode: 0o777, Size: 8, UID: 4000000000, GID: 7, LinkTarget: "a\"\nb\"c d"}
	if ino != want {
		t.Errorf("parsed %+v\nwant   %+v", ino, want)
	}
	dev := "Inode: 5   Type: character special    Mode:  06755   Flags: 0x0\nUser:     0   Group:     0   Size: 0\n"
	ino, _, ok, err = ext4ParseStat([]byte(dev))
	if err != nil || !ok || ino.Type != InodeOther || ino.Kind != "character special" || ino.Mode != fs.ModeSetuid|fs.ModeSetgid|0o755 {
		t.Errorf("device: %+v ok=%v err=%v", ino, ok, err)
	}
	if _, _, ok, err := ext4ParseStat(nil); ok || err != nil {
		t.Errorf("empty output: ok=%v err=%v", ok, err)
	}
	if _, _, _, err := ext4ParseStat([]byte("Inode: 5   Type: regular    Mode:  0644   Flags: 0x0\n")); err == nil {
		t.Error("truncated output: no error")
	}
}

func TestExt4ParseLs(t *testing.T) {
	out := "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/12/100644/-5/0/new\nline/3/\n/13/120777/0/0/with space/7/\n/14/104755/0/0/x/0/\n\n"
	entries, err := ext4ParseLs([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []DirEntry{
		{Name: "new\nline", Ino: 12, Type: InodeRegular, Mode: 0o644, Size: 3},
		{Name: "with space", Ino: 13, Type: InodeSymlink, Mode: 0o777, Size: 7},
		{Name: "x", Ino: 14, Type: InodeRegular, Mode: fs.ModeSetuid | 0o755},
	}
	if !slices.Equal(entries, want) {
		t.Errorf("entries %+v\nwant    %+v", entries, want)
	}
	for _, bad := range []string{"", "garbage\n", "/2/040755/0/0/.//\n/3/zz/0/0/x/1/\n"} {
		if _, err := ext4ParseLs([]byte(bad)); err == nil {
			t.Errorf("parse %q: no error", bad)
		}
	}
}

func TestExt4SplitOutput(t *testing.T) {
	cmds := []string{`cat "/x"`, `stat "/y"`}
	out := "# N 0\ndebugfs: cat \"/x\"\nno newline at end# N 1\ndebugfs: stat \"/y\"\nInode: 1\n# N end\n"
	outs, err := ext4SplitOutput([]byte(out), "N", cmds)
	if err != nil {
		t.Fatal(err)
	}
	if string(outs[0]) != "no newline at end" || string(outs[1]) != "Inode: 1\n" {
		t.Errorf("split %q", outs)
	}
	if _, err := ext4SplitOutput([]byte("# N 0\ndebugfs: cat \"/x\"\n"), "N", cmds); err == nil {
		t.Error("truncated output: no error")
	}
	if _, err := ext4Script("N", []string{"stat /x\nrm /y"}); err == nil {
		t.Error("multi-line command accepted")
	}
}

func TestExt4FatalLines(t *testing.T) {
	for lines, want := range map[string]string{
		"debugfs: Bad magic number in super-block while trying to open /x\nstat: Filesystem not open": "debugfs: Bad magic number in super-block while trying to open /x",
		"stat: Usage: stat <file>":                   "debugfs: stat: Usage: stat <file>",
		"debugfs: Command not found bogus":           "debugfs: Command not found bogus",
		"/a/Usage: x: File not found by ext2_lookup": "",
		"/stat: Filesystem not open: File not found": "",
		"/x: File not found by ext2_lookup":          "",
	} {
		if got := ext4FatalLines(strings.Split(lines, "\n")); got != want {
			t.Errorf("ext4FatalLines(%q) = %q, want %q", lines, got, want)
		}
	}
}
