package build

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cleanupStack runs undo steps in reverse order of registration.
type cleanupStack struct {
	fns []func() error
}

// push registers an undo step.
func (s *cleanupStack) push(fn func() error) { s.fns = append(s.fns, fn) }

// run runs and forgets every step (last in, first out) and returns their
// errors joined; it runs every step even when some fail.
func (s *cleanupStack) run() error {
	var errs []error
	for i := len(s.fns) - 1; i >= 0; i-- {
		if err := s.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.fns = nil
	return errors.Join(errs...)
}

// chrootEnvPath is PATH inside the build chroot.
const chrootEnvPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// chroot runs commands inside a root tree with /proc, /sys and a private
// /dev mounted. Mounts exist only between mount and unmount; unmount always
// runs (the builder defers it) and also ends any process still running
// with its root in the tree.
//
// The host's /dev is never bind-mounted into the tree: /dev is a fresh
// tmpfs holding only the usual device nodes (plus a private devpts and a
// tmpfs /dev/shm), so nothing that runs in the chroot, and no removal of
// the tree, can touch the host's device nodes.
type chroot struct {
	dir    string
	log    io.Writer // full command output
	env    []string  // extra KEY=VALUE for every command
	mounts cleanupStack
}

// chrootMount is one file system mounted for package installation.
type chrootMount struct {
	src, target, fstype string
	flags               uintptr
	data                string
}

// chrootMounts are mounted, in order, for package installation.
var chrootMounts = []chrootMount{
	{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY, ""},
	{"tmpfs", "dev", "tmpfs", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0755,size=16m"},
	{"devpts", "dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"tmpfs", "dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777,size=256m"},
}

// chrootDevices are created in the chroot's private /dev (name, major,
// minor); ptmx and the fd links are added too.
var chrootDevices = []struct {
	name         string
	major, minor uint32
}{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// mount mounts the pseudo file systems. On error, whatever was mounted is
// unmounted again.
func (c *chroot) mount() error {
	for _, m := range chrootMounts {
		target := filepath.Join(c.dir, m.target)
		if err := c.mountOne(m, target); err != nil {
			return errors.Join(err, c.unmount())
		}
		if m.target == "dev" {
			if err := populateDev(target); err != nil {
				return errors.Join(err, c.unmount())
			}
		}
	}
	return nil
}

// mountOne mounts m on target (refusing a symlinked target) and pushes its
// unmount.
func (c *chroot) mountOne(m chrootMount, target string) error {
	if st, err := os.Lstat(target); err == nil && !st.IsDir() {
		return fmt.Errorf("mount %s: %s is not a directory", m.fstype, target)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(m.src, target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
	}
	c.mounts.push(func() error { return unmountRetry(target) })
	// Private: nothing mounted here propagates anywhere else.
	if err := unix.Mount("", target, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", target, err)
	}
	return nil
}

// populateDev creates the device nodes and links of a minimal /dev.
func populateDev(dev string) error {
	for _, d := range chrootDevices {
		p := filepath.Join(dev, d.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chmod(p, 0o666); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{
		{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
	} {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return err
		}
	}
	return nil
}

// unmount ends stray processes in the chroot and unmounts everything
// mount mounted. It is safe to call more than once.
func (c *chroot) unmount() error {
	killChrootProcesses(c.dir)
	return c.mounts.run()
}

// unmountRetry unmounts target, retrying while it is busy and detaching it
// lazily as a last resort.
func unmountRetry(target string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(target, 0); err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if derr := unix.Unmount(target, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// killChrootProcesses SIGKILLs every process whose root directory is dir
// (daemons a maintainer script started despite policy-rc.d, or children
// that outlived a cancelled command).
func killChrootProcesses(dir string) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil || real == "/" {
		return
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		root, err := os.Readlink(filepath.Join("/proc", e.Name(), "root"))
		if err == nil && (root == real || strings.HasPrefix(root, real+"/")) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// mountsUnder lists the mount points at or below dir (from
// /proc/self/mountinfo), deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append([]string{mp}, out...)
		}
	}
	return out
}

// unescapeMountinfo decodes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeTree deletes dir after making sure nothing is mounted below it (a
// bind-mounted /dev inside a tree must never be deleted through it).
func removeTree(dir string) error {
	if dir == "" {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	killChrootProcesses(abs)
	for _, mp := range mountsUnder(abs) {
		if err := unmountRetry(mp); err != nil {
			return fmt.Errorf("refusing to remove %s: %w", abs, err)
		}
	}
	if left := mountsUnder(abs); len(left) > 0 {
		return fmt.Errorf("refusing to remove %s: still mounted: %v", abs, left)
	}
	return os.RemoveAll(abs)
}

// chrootCmd is one command to run inside the chroot.
type chrootCmd struct {
	args  []string
	env   []string    // extra KEY=VALUE pairs
	tail  *tailBuffer // also receives the output, for error messages
	extra *os.File    // passed as fd 3 (e.g. apt's status pipe)
}

// run runs a command inside the chroot with a clean environment. Output
// goes to the build log. The command runs in its own process group, which
// is killed as a whole when ctx ends.
func (c *chroot) run(ctx context.Context, cc chrootCmd) error {
	env := append([]string{
		"PATH=" + chrootEnvPath, "HOME=/root", "LANG=C.UTF-8", "LC_ALL=C.UTF-8",
		"DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true", "TERM=dumb",
	}, c.env...)
	env = append(env, cc.env...)
	args := append([]string{c.dir, "/usr/bin/env", "-i"}, env...)
	args = append(args, cc.args...)
	cmd := exec.CommandContext(ctx, "chroot", args...)
	cmd.Env = []string{"PATH=" + chrootEnvPath}
	var out io.Writer = c.log
	if cc.tail != nil {
		out = io.MultiWriter(c.log, cc.tail)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if cc.extra != nil {
		cmd.ExtraFiles = []*os.File{cc.extra}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	fmt.Fprintf(c.log, "+ chroot %s %s\n", c.dir, strings.Join(cc.args, " "))
	err := cmd.Run()
	if ctxErr := ctx.Err(); ctxErr != nil {
		killChrootProcesses(c.dir)
		return fmt.Errorf("%s: %w", cc.args[0], ctxErr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.Join(cc.args, " "), err)
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

// Write implements io.Writer.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// String returns the kept bytes.
func (t *tailBuffer) String() string { return string(t.buf) }
