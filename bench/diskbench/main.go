// Command diskbench measures what a new VM's disk costs: hearth's qcow2
// overlay over the raw image (what the QEMU driver's Prepare runs) against
// the old system's full copy with dd, for a 1 GiB and an 8 GiB base filled
// with data, in the same run. Time and bytes written are reported as
// ratios; the goal is a cost that does not grow with the image.
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
	"syscall"
	"time"
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
	return nil
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
