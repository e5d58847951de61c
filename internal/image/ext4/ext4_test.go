package ext4_test

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

	"github.com/hearth-project/hearth/internal/image/ext4"
	"github.com/hearth-project/hearth/internal/image/ext4/ext4test"
)

// ext4LongName is a file name long enough that a symlink to it is "slow"
// (target stored in a data block, not in the inode).
var ext4LongName = strings.Repeat("n", 80)

// ext4TestImage builds an image exercising the access layer's edge cases.
func ext4TestImage(t *testing.T) *ext4.Image {
	t.Helper()
	ext4test.RequireTools(t)
	tree := filepath.Join(t.TempDir(), "tree")
	ext4test.Materialize(t, tree, []ext4test.File{
		{Path: "/a/file", Mode: 0o640, Data: []byte("hello")},
		{Path: "/a/" + ext4LongName, Mode: 0o600, Data: []byte("long")},
		{Path: "/a/with space", Mode: 0o644, Data: []byte("s")},
		{Path: "/a/new\nline", Mode: 0o644, Data: []byte("n")},
		{Path: "/a/quote\"d", Mode: 0o644, Data: []byte("q")},
		{Path: "/a/empty", Mode: 0o644},
		{Path: "/a/link", Link: "file"},
		{Path: "/a/abs", Link: "/a/file"},
		{Path: "/a/up", Link: "../a/./file"},
		{Path: "/dirlink", Link: "a"},
		{Path: "/long", Link: "/a/" + ext4LongName},
		{Path: "/loop1", Link: "loop2"},
		{Path: "/loop2", Link: "/loop1"},
		{Path: "/dangling", Link: "/nope/file"},
		{Path: "/escape", Link: "../../../../../../a/file"},
		{Path: "/hostlink", Link: "/etc/hostname"},
		{Path: "/emptylink", Link: "a/.."},
		{Path: "/through-file", Link: "/a/file/x"},
	})
	img := filepath.Join(t.TempDir(), "img.ext4")
	ext4test.Mkfs(t, img, tree, 16, "test")
	ext4test.DebugfsWrite(t, img, "sif /a/file uid 4000000000\nsif /a/file gid 1234\n")
	im, err := ext4.Open(context.Background(), img)
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
	if st.Type != ext4.InodeRegular || st.Mode != 0o640 || st.Size != 5 || st.UID != 4000000000 || st.GID != 1234 || st.Ino == 0 {
		t.Errorf("stat /a/file = %+v", st)
	}
	if st, err := im.Stat(ctx, "/a"); err != nil || st.Type != ext4.InodeDir {
		t.Errorf("stat /a = %+v, %v", st, err)
	}
	for p, target := range map[string]string{"/a/link": "file", "/long": "/a/" + ext4LongName, "/escape": "../../../../../../a/file"} {
		st, err := im.Stat(ctx, p)
		if err != nil || st.Type != ext4.InodeSymlink || st.LinkTarget != target {
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
	slices.Sort(names) // on-disk order
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("readdir names %q, want %q", names, want)
	}
	for _, e := range entries {
		if e.Name == "link" && e.Type != ext4.InodeSymlink || e.Name == "file" && (e.Type != ext4.InodeRegular || e.Size != 5 || e.Mode != 0o640) {
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
		"/" + strings.Repeat("x", ext4.MaxPathLen),
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
