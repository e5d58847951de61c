package build

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
)

// treeFS describes the ext4 file system made from a directory tree.
type treeFS struct {
	SizeMiB  int
	UUID     string
	HashSeed string
	Epoch    int64
}

// writeTreeRootfs makes the raw ext4 image dst from tree with
// `mkfs.ext4 -d` (no loop mounts; owners, modes, xattrs and hard links are
// kept) and pins every inode's timestamps to the epoch with debugfs. It
// returns how many paths could not be pinned (names debugfs cannot quote).
func writeTreeRootfs(ctx context.Context, dst, tree, scratch string, f treeFS, m *meter) (skipped int, err error) {
	used, inodes, err := treeUsage(tree)
	if err != nil {
		return 0, err
	}
	// ext4 metadata, journal and reserved blocks need room too.
	if need := used + used/10 + int64(inodes)*256 + 96<<20; need > int64(f.SizeMiB)<<20 {
		return 0, fmt.Errorf("tree needs about %d MiB (%d MiB of files, %d inodes) but size_mib is %d", need>>20, used>>20, inodes, f.SizeMiB)
	}
	m.update(0, 3, fmt.Sprintf("mkfs.ext4 -d (%d MiB, %d inodes)", used>>20, inodes))
	if err := mkfsTree(ctx, dst, tree, f); err != nil {
		return 0, err
	}
	m.update(1, 3, fmt.Sprintf("pinning timestamps of %d inodes (debugfs)", inodes))
	script := filepath.Join(scratch, "debugfs-times.cmd")
	unquotable, err := writeTimesScript(script, tree, f.Epoch)
	if err != nil {
		return 0, err
	}
	cmd := hostcmd.Command{Name: "debugfs", Args: []string{"-w", "-f", script, dst}, Env: reproducibleEnv(f.Epoch)}
	stderr, err := hostcmd.RunStderr(ctx, cmd)
	if err != nil {
		return 0, err
	}
	if msg := debugfsErrors(stderr); msg != "" {
		return 0, fmt.Errorf("debugfs: %s", firstN(msg, 2000))
	}
	if skipped, err = pinByInode(ctx, dst, script, unquotable, f.Epoch); err != nil {
		return 0, err
	}
	m.update(2, 3, "e2fsck -fn")
	if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "e2fsck", Args: []string{"-f", "-n", dst}, Env: reproducibleEnv(f.Epoch)}); err != nil {
		return 0, fmt.Errorf("check: %w", err)
	}
	return skipped, nil
}

// mkfsTree creates a sparse image of the given size and fills it from tree.
func mkfsTree(ctx context.Context, dst, tree string, f treeFS) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := out.Truncate(int64(f.SizeMiB) << 20); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	args := []string{
		"-q", "-F", "-L", image.RootfsLabel, "-U", f.UUID,
		"-E", "hash_seed=" + f.HashSeed, "-d", tree, dst,
	}
	_, err = hostcmd.Run(ctx, hostcmd.Command{Name: "mkfs.ext4", Args: args, Env: reproducibleEnv(f.Epoch)})
	return err
}

// writeTimesScript writes debugfs commands that set atime, ctime, mtime
// and crtime of "/" and every path below tree to epoch (owners are kept:
// a Debian tree has non-root files). Paths debugfs cannot take in double
// quotes are skipped and counted.
func writeTimesScript(script, tree string, epoch int64) (skipped []string, err error) {
	f, err := os.Create(script)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	ts := time.Unix(epoch, 0).UTC().Format("20060102150405")
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		g := "/" + filepath.ToSlash(rel)
		if rel == "." {
			g = "/"
		}
		if !debugfsQuotable(g) {
			skipped = append(skipped, g)
			return nil
		}
		for _, field := range []string{"atime", "ctime", "mtime", "crtime"} {
			fmt.Fprintf(w, "sif \"%s\" %s %s\n", g, field, ts)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return skipped, f.Close()
}

// pinByInode pins the times of paths debugfs cannot quote by inode
// number, found by listing their (quotable) parent directories with
// `ls -p`. It returns how many paths it could not pin.
func pinByInode(ctx context.Context, img, script string, paths []string, epoch int64) (int, error) {
	byDir := map[string][]string{}
	for _, p := range paths {
		dir, name := path.Split(p)
		byDir[path.Clean(dir)] = append(byDir[path.Clean(dir)], name)
	}
	ts := time.Unix(epoch, 0).UTC().Format("20060102150405")
	var b strings.Builder
	left := 0
	for _, dir := range sortedKeys(byDir) {
		inodes, err := debugfsDirInodes(ctx, img, dir)
		if err != nil {
			left += len(byDir[dir])
			continue
		}
		for _, name := range byDir[dir] {
			ino, ok := inodes[name]
			if !ok {
				left++
				continue
			}
			for _, field := range []string{"atime", "ctime", "mtime", "crtime"} {
				fmt.Fprintf(&b, "sif <%d> %s %s\n", ino, field, ts)
			}
		}
	}
	if b.Len() == 0 {
		return left, nil
	}
	if err := os.WriteFile(script, []byte(b.String()), 0o644); err != nil {
		return 0, err
	}
	stderr, err := hostcmd.RunStderr(ctx, hostcmd.Command{Name: "debugfs", Args: []string{"-w", "-f", script, img}, Env: reproducibleEnv(epoch)})
	if err != nil {
		return 0, err
	}
	if msg := debugfsErrors(stderr); msg != "" {
		return 0, fmt.Errorf("debugfs: %s", firstN(msg, 2000))
	}
	return left, nil
}

// debugfsDirInodes lists a directory of the image: name -> inode number.
func debugfsDirInodes(ctx context.Context, img, dir string) (map[string]uint64, error) {
	if !debugfsQuotable(dir) {
		return nil, fmt.Errorf("directory %q cannot be quoted", dir)
	}
	out, err := hostcmd.Run(ctx, hostcmd.Command{Name: "debugfs", Args: []string{"-R", fmt.Sprintf("ls -p \"%s\"", dir), img}})
	if err != nil {
		return nil, err
	}
	inodes := map[string]uint64{}
	for _, line := range strings.Split(string(out), "\n") {
		// /<ino>/<mode>/<uid>/<gid>/<name>/<size>/
		f := strings.Split(line, "/")
		if len(f) < 8 {
			continue
		}
		name := strings.Join(f[5:len(f)-2], "/")
		if ino, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			inodes[name] = ino
		}
	}
	return inodes, nil
}

// debugfsQuotable reports whether debugfs parses p inside double quotes
// unchanged: valid UTF-8 without quotes, backslashes or control
// characters.
func debugfsQuotable(p string) bool {
	if !utf8.ValidString(p) {
		return false
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return false
		}
	}
	return true
}

// firstN truncates s to n bytes.
func firstN(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..." + fmt.Sprintf(" (%d more bytes)", len(s)-n)
}
