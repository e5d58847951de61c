package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Disk cloning methods, best first. Firecracker has no qcow2: a VM's root
// drive is a raw file of its own. A reflink shares every block with the
// image until the guest writes it (constant time and space, whatever the
// image's size); a sparse copy copies only the image's data extents and
// keeps its holes.
const (
	CloneReflink = "reflink"
	CloneSparse  = "sparse-copy"
)

// ProbeClone reports the best cloning method for files under dir: it makes
// two small files there and tries to reflink one to the other.
func ProbeClone(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("probe disk cloning: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".clone-probe-")
	if err != nil {
		return "", fmt.Errorf("probe disk cloning: %w", err)
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if err := os.WriteFile(src, make([]byte, 4096), 0o600); err != nil {
		return "", fmt.Errorf("probe disk cloning: %w", err)
	}
	if err := reflink(src, filepath.Join(tmp, "dst")); err != nil {
		return CloneSparse, nil
	}
	return CloneReflink, nil
}

// CloneDisk makes dst a private copy of src by method (CloneReflink or
// CloneSparse), through a temporary file so a crash never leaves a
// half-copied disk under dst's name.
func CloneDisk(method, src, dst string) error {
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	var err error
	switch method {
	case CloneReflink:
		err = reflink(src, tmp)
	case CloneSparse:
		err = sparseCopy(src, tmp)
	default:
		err = fmt.Errorf("unknown disk cloning method %q", method)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("clone %s (%s): %w", src, method, err)
	}
	return os.Rename(tmp, dst)
}

func reflink(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		out.Close()
		_ = os.Remove(dst)
		return fmt.Errorf("reflink: %w", err)
	}
	return out.Close()
}

// sparseCopy copies src's data extents (SEEK_DATA/SEEK_HOLE) to dst and
// gives dst src's size, so holes stay holes.
func sparseCopy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := copyExtents(in, out, st.Size()); err != nil {
		out.Close()
		return err
	}
	if err := out.Truncate(st.Size()); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func copyExtents(in, out *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if _, err := io.CopyBuffer(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data), buf); err != nil {
			return err
		}
		off = hole
	}
	return nil
}
