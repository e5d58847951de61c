package firecracker

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hearth-project/hearth/internal/vmm"
)

// JailerConfig runs every VM under Firecracker's jailer: the firecracker
// process is chrooted into a directory of its own inside the VM's
// directory, runs as an unprivileged uid/gid, in cgroups sized from the VM
// (cpu.max from its vCPUs, memory.max from its memory plus
// MemoryOverheadMiB) and, if NetNS is set, in that network namespace (the
// one hearth's bridge and TAPs live in).
type JailerConfig struct {
	Binary            string // jailer executable; empty: no jailer
	UID, GID          int    // the jailed process's ids (not root)
	NetNS             string // path of a network namespace, e.g. /var/run/netns/hearth
	ParentCgroup      string // cgroup (v2) the VMs' cgroups are made under; empty: the jailer's default
	MemoryOverheadMiB int    // added to the guest's memory in memory.max (zero: 128)
}

func (j JailerConfig) validate() error {
	if j.Binary == "" {
		return nil
	}
	if j.UID <= 0 || j.GID <= 0 {
		return fmt.Errorf("firecracker: the jailer needs an unprivileged uid and gid (got %d:%d)", j.UID, j.GID)
	}
	if j.NetNS != "" && !filepath.IsAbs(j.NetNS) {
		return fmt.Errorf("firecracker: jailer netns %q must be an absolute path", j.NetNS)
	}
	if j.MemoryOverheadMiB < 0 {
		return fmt.Errorf("firecracker: jailer memory overhead %d MiB", j.MemoryOverheadMiB)
	}
	return nil
}

// base is the jailer's --chroot-base-dir for a VM: inside the VM's
// directory, so deleting the VM deletes its jail.
func (j JailerConfig) base(vmDir string) string { return filepath.Join(vmDir, "jail") }

// root is the jail's root directory, as the jailer makes it:
// <base>/<exec file name>/<id>/root.
func (j JailerConfig) root(vmDir, fcBinary, id string) string {
	return filepath.Join(j.base(vmDir), filepath.Base(fcBinary), id, "root")
}

// argv is the jailer's command line; fc are firecracker's own arguments.
func (j JailerConfig) argv(fcBinary string, spec vmm.Spec, fc []string) []string {
	overhead := j.MemoryOverheadMiB
	if overhead == 0 {
		overhead = 128
	}
	args := []string{j.Binary,
		"--id", spec.ID,
		"--exec-file", fcBinary,
		"--uid", itoa(j.UID),
		"--gid", itoa(j.GID),
		"--chroot-base-dir", j.base(spec.Dir),
		"--cgroup-version", "2",
		"--cgroup", fmt.Sprintf("cpu.max=%d 100000", spec.VCPUs*100000),
		"--cgroup", fmt.Sprintf("memory.max=%d", int64(spec.MemoryMiB+overhead)<<20),
	}
	if j.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", j.ParentCgroup)
	}
	if j.NetNS != "" {
		args = append(args, "--netns", j.NetNS)
	}
	return append(append(args, "--"), fc...)
}

// prepareRoot makes the jail's root (owned by the jailed user, who makes
// its sockets there) and links (or copies) the kernel and
// initrd into it, readable by the jailed user.
func (j JailerConfig) prepareRoot(root string, spec vmm.Spec) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	// The jailed process makes its sockets (API, vsock) in its root.
	if err := j.own(root); err != nil {
		return err
	}
	files := map[string]string{spec.Kernel: fileKernel}
	if spec.Initrd != "" {
		files[spec.Initrd] = fileInitrd
	}
	for src, name := range files {
		dst := filepath.Join(root, name)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		if err := os.Link(src, dst); err != nil {
			if err := copyFile(src, dst, 0o644); err != nil {
				return fmt.Errorf("put %s into the jail: %w", src, err)
			}
		}
	}
	return nil
}

// own gives a file in the jail to the jailed user.
func (j JailerConfig) own(path string) error {
	if err := os.Chown(path, j.UID, j.GID); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	return nil
}

// cleanup removes a stopped VM's jail (the jailer mounts nothing in
// hearth's mount namespace; a mount found there is refused, never
// removed through) and its cgroup.
func (j JailerConfig) cleanup(h vmm.Handle) error {
	base := j.base(h.Dir)
	if m, err := mountUnder(base); err != nil || m != "" {
		if err == nil {
			err = fmt.Errorf("%s is mounted; not removing the jail", m)
		}
		return fmt.Errorf("cleanup jail: %w", err)
	}
	if err := os.RemoveAll(base); err != nil {
		return fmt.Errorf("cleanup jail: %w", err)
	}
	// The jail root is <base>/<exec>/<id>/root: the cgroup is
	// <parent>/<id>, the parent defaulting to the exec file's name.
	id := filepath.Base(filepath.Dir(h.Jail))
	parent := j.ParentCgroup
	if parent == "" {
		parent = filepath.Base(filepath.Dir(filepath.Dir(h.Jail)))
	}
	if err := os.Remove(filepath.Join("/sys/fs/cgroup", parent, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cleanup jail cgroup: %w", err)
	}
	return nil
}

// mountUnder returns a mount point at or below dir, if any.
func mountUnder(dir string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	prefix := filepath.Clean(dir)
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := fields[4]; mp == prefix || strings.HasPrefix(mp, prefix+"/") {
			return mp, nil
		}
	}
	return "", s.Err()
}
