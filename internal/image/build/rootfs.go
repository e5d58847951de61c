package build

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// rootfsSpec is what goes into a root filesystem image.
type rootfsSpec struct {
	Spec      *spec.Spec
	Busybox   []byte   // static busybox binary
	Applets   []string // busybox --list-full output (relative paths)
	Agent     []byte   // static agent binary
	ImageInfo []byte   // JSON for GuestImageInfoPath
	UUID      string   // file system UUID
	HashSeed  string   // directory hash seed (a UUID)
	Epoch     int64    // timestamp for every inode
}

// rootfsDirs are created in every busybox-based root (path, permissions).
var rootfsDirs = []struct {
	path string
	perm fs.FileMode
}{
	{"/dev", 0o755}, {"/proc", 0o555}, {"/sys", 0o555}, {"/run", 0o755},
	{"/tmp", fs.ModeSticky | 0o777}, {"/root", 0o700}, {"/home", 0o755}, {"/mnt", 0o755},
	{"/var/log", 0o755}, {"/etc/hearth", 0o755}, {"/usr/bin", 0o755},
	{"/usr/sbin", 0o755}, {"/sbin", 0o755}, {"/bin", 0o755}, {"/lib", 0o755},
}

// rootfsTree assembles the root file system contents for s.
func rootfsTree(s rootfsSpec) (fsTree, error) {
	t, err := baseTree(s)
	if err != nil {
		return nil, err
	}
	if err := t.add("/etc/hostname", fsEntry{mode: 0o644, data: []byte(s.Spec.Hostname + "\n")}); err != nil {
		return nil, err
	}
	for _, f := range s.Spec.Files {
		if err := t.add(f.Path, fsEntry{mode: f.Mode.Perm(), data: f.Data()}); err != nil {
			return nil, fmt.Errorf("spec file: %w", err)
		}
	}
	for _, u := range s.Spec.Users {
		// Checked by the spec: the account is in the spec's /etc/passwd.
		a, ok := s.Spec.Account(u.Name)
		if !ok {
			return nil, fmt.Errorf("user %s: not in the spec's /etc/passwd", u.Name)
		}
		if err := t.add(u.Home, fsEntry{mode: fs.ModeDir | 0o755, uid: a.UID, gid: a.GID}); err != nil {
			return nil, fmt.Errorf("home of %s: %w", u.Name, err)
		}
	}
	if err := t.add(image.GuestAgentPath, fsEntry{mode: 0o755, data: s.Agent}); err != nil {
		return nil, err
	}
	if err := t.add(image.GuestImageInfoPath, fsEntry{mode: 0o644, data: s.ImageInfo}); err != nil {
		return nil, err
	}
	return t, nil
}

// baseTree returns the spec's base tree (before spec files, agent and
// image info are added).
func baseTree(s rootfsSpec) (fsTree, error) {
	switch s.Spec.Base.Kind {
	case spec.BaseBusybox:
		return busyboxTree(s)
	default:
		return nil, fmt.Errorf("image %s: unsupported base %q for an in-memory tree", s.Spec.Name, s.Spec.Base.Kind)
	}
}

// busyboxTree is a root holding busybox, a link for every applet
// (including /sbin/init) and the standard directories.
func busyboxTree(s rootfsSpec) (fsTree, error) {
	t := fsTree{}
	for _, d := range rootfsDirs {
		if err := t.add(d.path, fsEntry{mode: fs.ModeDir | d.perm}); err != nil {
			return nil, err
		}
	}
	if err := t.add("/var/run", fsEntry{mode: fs.ModeSymlink | 0o777, target: "/run"}); err != nil {
		return nil, err
	}
	if err := t.add("/bin/busybox", fsEntry{mode: 0o755, data: s.Busybox}); err != nil {
		return nil, err
	}
	for _, a := range s.Applets {
		p := path.Clean("/" + a)
		if p == "/bin/busybox" {
			continue
		}
		if err := t.add(p, fsEntry{mode: fs.ModeSymlink | 0o777, target: "/bin/busybox"}); err != nil {
			return nil, fmt.Errorf("applet link: %w", err)
		}
	}
	if _, ok := t["/sbin/init"]; !ok {
		return nil, fmt.Errorf("busybox has no init applet")
	}
	return t, nil
}

// busyboxApplets lists a busybox binary's applets as install paths
// ("bin/sh", "sbin/init", ...), by running it with --list-full.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := hostcmd.Run(ctx, hostcmd.Command{Name: busybox, Args: []string{"--list-full"}})
	if err != nil {
		return nil, err
	}
	applets := strings.Fields(string(out))
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list-full: no applets", busybox)
	}
	return applets, nil
}

// materialize writes the tree below dir with exact permissions (regardless
// of the umask). Device nodes are not supported.
func materialize(t fsTree, dir string) error {
	for _, p := range t.sortedPaths() {
		e := t[p]
		dst := filepath.Join(dir, filepath.FromSlash(p))
		var err error
		switch {
		case e.mode.IsDir():
			if err = os.Mkdir(dst, 0o700); err == nil {
				err = os.Chmod(dst, e.mode.Perm()|e.mode&fs.ModeSticky)
			}
		case e.mode&fs.ModeSymlink != 0:
			err = os.Symlink(e.target, dst)
		case e.mode.IsRegular():
			if err = os.WriteFile(dst, e.data, 0o600); err == nil {
				err = os.Chmod(dst, e.mode.Perm())
			}
		default:
			err = fmt.Errorf("unsupported file type %v", e.mode.Type())
		}
		if err != nil {
			return fmt.Errorf("rootfs tree %s: %w", p, err)
		}
	}
	return nil
}

// reproducibleEnv makes e2fsprogs use a fixed "now".
func reproducibleEnv(epoch int64) []string {
	e := strconv.FormatInt(epoch, 10)
	return []string{"E2FSPROGS_FAKE_TIME=" + e, "SOURCE_DATE_EPOCH=" + e}
}

// writeRootfs builds the raw ext4 image dst from s, using scratch (an empty
// directory the caller removes afterwards) for the staging tree. No loop mounts are involved: the tree is
// copied in by `mkfs.ext4 -d`, then every inode's timestamps and ownership
// are pinned with debugfs so identical inputs give identical bytes.
func writeRootfs(ctx context.Context, dst, scratch string, s rootfsSpec) error {
	t, err := rootfsTree(s)
	if err != nil {
		return err
	}
	tree := filepath.Join(scratch, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	if err := materialize(t, tree); err != nil {
		return err
	}
	if err := mkfsExt4(ctx, dst, tree, s); err != nil {
		return err
	}
	if err := pinInodes(ctx, dst, scratch, t, s.Epoch); err != nil {
		return err
	}
	if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "e2fsck", Args: []string{"-f", "-n", dst}, Env: reproducibleEnv(s.Epoch)}); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	return nil
}

// mkfsExt4 creates a sparse image of the profile's size and formats it with
// the tree's contents.
func mkfsExt4(ctx context.Context, dst, tree string, s rootfsSpec) error {
	size := int64(s.Spec.SizeMiB) << 20
	if size <= 0 {
		return fmt.Errorf("image %s: rootfs size %d MiB", s.Spec.Name, s.Spec.SizeMiB)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	args := []string{
		"-q", "-F", "-L", image.RootfsLabel, "-U", s.UUID,
		"-E", "hash_seed=" + s.HashSeed + ",root_owner=0:0",
		"-d", tree, dst,
	}
	_, err = hostcmd.Run(ctx, hostcmd.Command{Name: "mkfs.ext4", Args: args, Env: reproducibleEnv(s.Epoch)})
	return err
}

// pinInodes sets atime/ctime/mtime/crtime to epoch and the owner the tree
// gives (root, but for users' homes) on every inode of the tree. mkfs.ext4 -d copies ctime from the staging files (it
// cannot be set from user space) and ownership from the building user.
func pinInodes(ctx context.Context, img, scratch string, t fsTree, epoch int64) error {
	script, err := debugfsScript(t, epoch)
	if err != nil {
		return err
	}
	cmdFile := filepath.Join(scratch, "debugfs.cmd")
	if err := os.WriteFile(cmdFile, script, 0o644); err != nil {
		return err
	}
	// debugfs -f exits 0 even when a command fails; failures show on stderr.
	cmd := hostcmd.Command{Name: "debugfs", Args: []string{"-w", "-f", cmdFile, img}, Env: reproducibleEnv(epoch)}
	stderr, err := hostcmd.RunStderr(ctx, cmd)
	if err != nil {
		return err
	}
	if msg := debugfsErrors(stderr); msg != "" {
		return fmt.Errorf("debugfs: %s", msg)
	}
	return nil
}

// debugfsScript renders the set_inode_field commands for pinInodes.
func debugfsScript(t fsTree, epoch int64) ([]byte, error) {
	ts := time.Unix(epoch, 0).UTC().Format("20060102150405")
	var b strings.Builder
	for _, p := range append([]string{"/"}, t.sortedPaths()...) {
		if !spec.PlainPath(p) {
			return nil, fmt.Errorf("path %q: unsupported characters for the ext4 image", p)
		}
		for _, field := range []string{"atime", "ctime", "mtime", "crtime"} {
			fmt.Fprintf(&b, "sif \"%s\" %s %s\n", p, field, ts)
		}
		e := t[p] // the zero entry for "/": root's
		fmt.Fprintf(&b, "sif \"%s\" uid %d\nsif \"%s\" gid %d\n", p, e.uid, p, e.gid)
	}
	return []byte(b.String()), nil
}

// debugfsErrors returns debugfs's standard error minus its version banner.
func debugfsErrors(stderr []byte) string {
	var errs []string
	for _, line := range strings.Split(string(stderr), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "debugfs ") {
			continue
		}
		errs = append(errs, line)
	}
	return strings.Join(errs, "; ")
}
