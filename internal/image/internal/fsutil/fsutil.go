// Package fsutil holds the image builder's file operations: hex SHA-256
// digests as manifests record them, files written and renamed durably,
// copies, advisory locks on cache entries and removal of what interrupted
// builds left behind.
package fsutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// SHA256File returns the hex SHA-256 of a file's contents.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SHA256Hex returns the hex SHA-256 of s.
func SHA256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// FileStat holds the facts the manifest records about an output file.
type FileStat struct {
	SHA256   string
	Size     int64 // apparent size
	DiskSize int64 // allocated bytes (st_blocks * 512)
}

// StatFile hashes a file and reports its apparent and allocated sizes.
func StatFile(path string) (FileStat, error) {
	sum, err := SHA256File(path)
	if err != nil {
		return FileStat{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return FileStat{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return FileStat{SHA256: sum, Size: st.Size, DiskSize: st.Blocks * 512}, nil
}

// HashingFile is a file being written whose SHA-256 is computed on the fly.
type HashingFile struct {
	f *os.File
	h hash.Hash
	n int64
}

// CreateHashing creates (truncating) path for writing with on-the-fly hashing.
func CreateHashing(path string, perm os.FileMode) (*HashingFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return nil, err
	}
	return &HashingFile{f: f, h: sha256.New()}, nil
}

// Write implements io.Writer.
func (w *HashingFile) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Close syncs and closes the file and returns its hex SHA-256 and size.
func (w *HashingFile) Close() (string, int64, error) {
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(w.h.Sum(nil)), w.n, nil
}

// Abort closes the file without syncing; the caller removes it.
func (w *HashingFile) Abort() { _ = w.f.Close() }

// WriteFileSync writes data to path and fsyncs it.
func WriteFileSync(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// SyncDir fsyncs a directory so a rename inside it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// LinkOrCopy hard-links src to dst, copying when a link is impossible (for
// example across file systems).
func LinkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return CopyFile(src, dst, 0o644)
}

// CopyFile copies src to dst with the given permissions.
func CopyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	// OpenFile's perm is filtered by the umask; set the exact mode.
	return os.Chmod(dst, perm)
}

// FileLock is an exclusive advisory lock held on a file.
type FileLock struct{ f *os.File }

// LockFile takes an exclusive flock on path (created if needed), waiting
// until it is free or ctx is done.
func LockFile(ctx context.Context, path string) (*FileLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &FileLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Unlock releases the lock.
func (l *FileLock) Unlock() {
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	_ = l.f.Close()
}

// RemoveStale deletes path and everything matching the glob pattern. Call
// it only while holding the lock that guards their creation.
func RemoveStale(path, pattern string) error {
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return err
	}
	for _, p := range append(matches, path) {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove stale %s: %w", p, err)
		}
	}
	return nil
}
