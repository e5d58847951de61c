package ext4

import (
	"io/fs"
	"slices"
	"strings"
	"testing"
)

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
