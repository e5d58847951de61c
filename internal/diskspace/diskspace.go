// Package diskspace says how much room the file system of hearth's state
// directory has left, so that hearth answers "not ready" and refuses new
// VMs while there is still room to finish what it has started, instead of
// letting a full disk fail every user's writes.
package diskspace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// MinFreeInodes is the fewest free inodes a file system may have before it
// counts as full, whatever its free bytes: every VM and every SQLite
// journal needs some.
const MinFreeInodes = 1000

// Usage is what a file system has left.
type Usage struct {
	Free, Total        uint64 // bytes available to hearth, and in all
	FreeInodes, Inodes uint64 // zero Inodes: the file system does not count them
	Path               string // the directory measured
}

// Of measures the file system holding dir (or, while dir does not exist
// yet, its nearest existing parent).
func Of(dir string) (Usage, error) {
	p := filepath.Clean(dir)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return Usage{Free: st.Bavail * uint64(st.Bsize), Total: st.Blocks * uint64(st.Bsize),
				FreeInodes: st.Ffree, Inodes: st.Files, Path: p}, nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, os.ErrNotExist) || parent == p {
			return Usage{}, fmt.Errorf("free space of %s: %w", dir, err)
		}
		p = parent
	}
}

// Low reports why u is below min free bytes (or MinFreeInodes), or "".
func (u Usage) Low(min uint64) string {
	switch {
	case min > 0 && u.Free < min:
		return fmt.Sprintf("%s free under %s, below the %s hearth keeps free (state_dir_min_free)", Bytes(u.Free), u.Path, Bytes(min))
	case u.Inodes > 0 && u.FreeInodes < MinFreeInodes:
		return fmt.Sprintf("%d inodes free under %s, below %d", u.FreeInodes, u.Path, MinFreeInodes)
	}
	return ""
}

// Check is an errdefs.ErrUnavailable naming what is low when dir's file
// system has less than min bytes (or MinFreeInodes inodes) free, and nil
// otherwise. A file system that cannot be measured is not reported: the
// writes themselves will say what is wrong.
func Check(dir string, min uint64) error {
	u, err := Of(dir)
	if err != nil {
		return nil
	}
	if why := u.Low(min); why != "" {
		return errdefs.Unavailablef("low disk space: %s", why)
	}
	return nil
}

// Bytes formats n in binary units ("1.5 GiB").
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
