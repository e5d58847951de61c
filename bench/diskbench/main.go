// Command diskbench measures what a new VM's disk costs: hearth's qcow2
// overlay over the raw image (what the QEMU driver's Prepare runs) against
// the old system's full copy with dd, for a 1 GiB and an 8 GiB base filled
// with data, in the same run. Time and bytes written are reported as
// ratios; the goal is a cost that does not grow with the image.
//
// A second table is the Firecracker driver's (which needs raw disks): a
// reflink on a loop-mounted btrfs and its sparse copy on the scratch
// directory's file system, against dd and the qcow2 overlay, for an 8 GiB
// image holding 1 GiB of data, as a root file system with room to grow
// does.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/vmm/firecracker"
)

func main() {
	dir := flag.String("dir", "", "scratch directory (default: a temp dir; needs ~20 GiB free)")
	runs := flag.Int("runs", 5, "disks per size and method")
	flag.Parse()
	if err := run(*dir, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "diskbench:", err)
		os.Exit(1)
	}
}

func run(dir string, runs int) error {
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "diskbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	fmt.Printf("## per-VM disk creation (%d runs per size and method)\n\n", runs)
	fmt.Println("| base image | hearth overlay: time p50 | bytes written | full copy (dd): time p50 | bytes written | time ratio | bytes ratio |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, gib := range []int64{1, 8} {
		base := filepath.Join(dir, fmt.Sprintf("base-%dg.ext4", gib))
		if err := fill(base, gib<<30); err != nil {
			return err
		}
		var ovT, cpT []time.Duration
		var ovB, cpB int64
		for i := range runs {
			ov := filepath.Join(dir, fmt.Sprintf("vm%d.qcow2", i))
			t, b, err := measure(ov, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", ov)
			if err != nil {
				return err
			}
			ovT, ovB = append(ovT, t), b
			cp := filepath.Join(dir, fmt.Sprintf("vm%d.ext4", i))
			t, b, err = measure(cp, "dd", "if="+base, "of="+cp, "bs=4M", "conv=fsync", "status=none")
			if err != nil {
				return err
			}
			cpT, cpB = append(cpT, t), b
			_ = os.Remove(ov)
			_ = os.Remove(cp)
		}
		fmt.Printf("| %d GiB | %s | %s | %s | %s | %.0f× | %.0f× |\n", gib, ms(p50(ovT)), size(ovB), ms(p50(cpT)), size(cpB),
			float64(p50(cpT))/float64(p50(ovT)), float64(cpB)/float64(ovB))
		_ = os.Remove(base)
	}
	fmt.Println("\nbytes written = blocks the new disk occupies on the host filesystem (st_blocks × 512).")
	return firecrackerTable(dir, runs)
}

// firecrackerTable measures the Firecracker driver's disk cloning.
func firecrackerTable(dir string, runs int) error {
	pool, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "btrfs")
	if err := makeBtrfs(pool, mnt, 12<<30); err != nil {
		return err
	}
	defer func() { _ = exec.Command("umount", mnt).Run() }() // best effort: the pool goes with dir
	ext4Base := filepath.Join(dir, "fc-base.ext4")
	if err := fillSparse(ext4Base, 8<<30, 1<<30); err != nil {
		return err
	}
	btrfsBase := filepath.Join(mnt, "fc-base.ext4")
	if err := fillSparse(btrfsBase, 8<<30, 1<<30); err != nil {
		return err
	}
	type method struct {
		name string
		run  func(i int) (string, error)
	}
	methods := []method{
		{"hearth reflink (btrfs)", func(i int) (string, error) {
			out := filepath.Join(mnt, fmt.Sprintf("vm%d.ext4", i))
			return out, firecracker.CloneDisk(firecracker.CloneReflink, btrfsBase, out)
		}},
		{"hearth sparse copy (" + fsName(dir) + ")", func(i int) (string, error) {
			out := filepath.Join(dir, fmt.Sprintf("vm%d.ext4", i))
			return out, firecracker.CloneDisk(firecracker.CloneSparse, ext4Base, out)
		}},
		{"full copy with dd (old system)", func(i int) (string, error) {
			out := filepath.Join(dir, fmt.Sprintf("vm%d.ext4", i))
			b, err := exec.Command("dd", "if="+ext4Base, "of="+out, "bs=4M", "conv=fsync", "status=none").CombinedOutput()
			if err != nil {
				return out, fmt.Errorf("dd: %v: %s", err, b)
			}
			return out, nil
		}},
		{"qcow2 overlay (QEMU driver)", func(i int) (string, error) {
			out := filepath.Join(dir, fmt.Sprintf("vm%d.qcow2", i))
			b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", ext4Base, "-F", "raw", out).CombinedOutput()
			if err != nil {
				return out, fmt.Errorf("qemu-img: %v: %s", err, b)
			}
			return out, nil
		}},
	}
	fmt.Printf("\n## per-VM disk creation, Firecracker driver (8 GiB image holding 1 GiB of data; %d runs)\n\n", runs)
	fmt.Println("| method | time p50 | bytes written |")
	fmt.Println("|---|---|---|")
	for _, m := range methods {
		var ts []time.Duration
		var written int64
		for i := range runs {
			syncAll()
			start := time.Now()
			out, err := m.run(i)
			if err != nil {
				return err
			}
			syncAll() // a copy is only done once it is on disk
			ts = append(ts, time.Since(start))
			var st syscall.Stat_t
			if err := syscall.Stat(out, &st); err != nil {
				return err
			}
			written = st.Blocks * 512
			if m.name == "hearth reflink (btrfs)" {
				written = sharedExcl(mnt, out, written)
			}
			_ = os.Remove(out)
		}
		fmt.Printf("| %s | %s | %s |\n", m.name, ms(p50(ts)), size(written))
	}
	fmt.Println("\nTimes include a sync, so a copy counts only once it is on disk. A reflink's bytes written are its exclusive extents (btrfs filesystem du); its blocks are otherwise shared with the image.")
	return nil
}

// makeBtrfs makes and loop-mounts a btrfs file system of size bytes.
func makeBtrfs(img, mnt string, size int64) error {
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	_ = f.Truncate(size)
	f.Close()
	if b, err := exec.Command("mkfs.btrfs", "-q", "-f", img).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.btrfs (btrfs-progs): %v: %s", err, b)
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return err
	}
	if b, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("mount btrfs: %v: %s", err, b)
	}
	return nil
}

// fillSparse writes a file of size bytes whose first data bytes are
// incompressible data and the rest a hole.
func fillSparse(path string, size, data int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, data); err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// sharedExcl returns a reflink's exclusive bytes as btrfs counts them, or
// def if it cannot tell.
func sharedExcl(mnt, file string, def int64) int64 {
	out, err := exec.Command("btrfs", "filesystem", "du", "--raw", file).Output()
	if err != nil {
		return def
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		return def
	}
	f := strings.Fields(lines[1]) // Total Exclusive Set-shared Filename
	if len(f) < 2 {
		return def
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return def
	}
	return n
}

func syncAll() { syscall.Sync() }

func fsName(dir string) string {
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", "-T", dir).Output()
	if err != nil {
		return "scratch dir"
	}
	return strings.TrimSpace(string(out))
}

// fill writes a base image of n bytes of incompressible data, like a full
// root filesystem, and flushes it so the copies read from a settled file.
func fill(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		return err
	}
	return f.Sync()
}

func measure(out, name string, args ...string) (time.Duration, int64, error) {
	t := time.Now()
	if b, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("%s: %v: %s", name, err, b)
	}
	d := time.Since(t)
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		return 0, 0, err
	}
	return d, st.Blocks * 512, nil
}

func p50(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func size(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10))
	}
}
