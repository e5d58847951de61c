// Package ext4 reads raw ext4 file system images (an image's rootfs.ext4)
// through debugfs (e2fsprogs): no mount, no loop device, no root. Every
// look-up goes through one debugfs process per batch (`debugfs -f cmdfile`),
// so checking hundreds of paths costs a few processes, not hundreds.
// Symbolic links are followed by this package, inside the image only:
// nothing here ever touches the host's file system except the image itself
// and private temporary files.
package ext4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// Limits of the ext4 access layer.
const (
	// ext4MaxSymlinks bounds the symbolic links followed while resolving
	// one path (Linux's MAXSYMLINKS).
	ext4MaxSymlinks = 40
	// ext4MaxPathLen bounds the paths given to debugfs (PATH_MAX - 1); its
	// command reader takes lines of at most BUFSIZ bytes.
	ext4MaxPathLen = 4095
	// ext4DumpChunk bounds the bytes one debugfs run dumps into temporary
	// files before they are consumed and removed.
	ext4DumpChunk = 256 << 20
)

// InodeType is the kind of an inode in an ext4 image.
type InodeType uint8

// Inode types.
const (
	InodeOther InodeType = iota // device, FIFO, socket
	InodeRegular
	InodeDir
	InodeSymlink
)

// String names the type as error messages do.
func (t InodeType) String() string {
	switch t {
	case InodeRegular:
		return "regular file"
	case InodeDir:
		return "directory"
	case InodeSymlink:
		return "symlink"
	default:
		return "special file"
	}
}

// Inode is what the image records about one file.
type Inode struct {
	Ino  uint64
	Type InodeType
	// Kind is debugfs's name for the type ("regular", "character
	// special", ...), more precise than Type for special files.
	Kind string
	// Mode holds the permission bits plus setuid, setgid and sticky (as
	// fs.ModeSetuid, fs.ModeSetgid, fs.ModeSticky); no type bits.
	Mode     fs.FileMode
	Size     int64
	UID, GID uint32
	// LinkTarget is a symlink's target, verbatim.
	LinkTarget string
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name string
	Ino  uint64
	Type InodeType
	Mode fs.FileMode // as Inode.Mode
	Size int64       // 0 for directories
}

// Image is a raw ext4 file system image read through debugfs.
type Image struct {
	path    string // absolute
	debugfs string // the debugfs binary
}

// Open checks that debugfs is installed and that it can open the
// image at path.
func Open(ctx context.Context, imgPath string) (*Image, error) {
	bin, err := exec.LookPath("debugfs")
	if err != nil {
		return nil, fmt.Errorf("debugfs (e2fsprogs) is required: %w", err)
	}
	abs, err := filepath.Abs(imgPath)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", imgPath)
	}
	im := &Image{path: abs, debugfs: bin}
	root, err := im.Stat(ctx, "/")
	if err != nil {
		return nil, fmt.Errorf("ext4 image %s: %w", imgPath, err)
	}
	if root.Type != InodeDir {
		return nil, fmt.Errorf("ext4 image %s: root inode is a %s", imgPath, root.Type)
	}
	return im, nil
}

// Stat describes the file at p without following a final symlink (lstat).
// Symlinks in the directories leading to it are followed inside the image.
func (im *Image) Stat(ctx context.Context, p string) (Inode, error) {
	return im.one(ctx, p, false)
}

// Resolve follows p through symlinks (absolute and relative, resolved
// inside the image) and returns the final path and its inode.
func (im *Image) Resolve(ctx context.Context, p string) (string, Inode, error) {
	res, err := im.ResolveAll(ctx, []Request{{Path: p, Follow: true}})
	if err != nil {
		return "", Inode{}, err
	}
	r := res[0]
	return r.Final, r.Inode, r.Err
}

// Readlink returns the target of the symlink at p.
func (im *Image) Readlink(ctx context.Context, p string) (string, error) {
	ino, err := im.Stat(ctx, p)
	if err != nil {
		return "", err
	}
	if ino.Type != InodeSymlink {
		return "", &fs.PathError{Op: "readlink", Path: p, Err: syscall.EINVAL}
	}
	return ino.LinkTarget, nil
}

// ReadFile returns the contents of the regular file at p (symlinks
// followed), refusing files larger than limit bytes.
func (im *Image) ReadFile(ctx context.Context, p string, limit int64) ([]byte, error) {
	_, ino, err := im.Resolve(ctx, p)
	if err != nil {
		return nil, err
	}
	if ino.Type != InodeRegular {
		return nil, &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("is a %s", ino.Type)}
	}
	if ino.Size > limit {
		return nil, &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("%d bytes exceeds the limit of %d", ino.Size, limit)}
	}
	var data []byte
	err = im.ReadInodes(ctx, []Inode{ino}, func(_ int, r io.Reader, err error) error {
		if err != nil {
			return err
		}
		data, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return data, nil
}

// ReadDir lists the directory at p (symlinks followed), without "." and
// "..", in on-disk order.
func (im *Image) ReadDir(ctx context.Context, p string) ([]DirEntry, error) {
	final, ino, err := im.Resolve(ctx, p)
	if err != nil {
		return nil, err
	}
	if ino.Type != InodeDir {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: syscall.ENOTDIR}
	}
	outs, _, err := im.batch(ctx, []string{"ls -p " + ext4InodeArg(ino.Ino)})
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", final, err)
	}
	entries, err := ext4ParseLs(outs[0])
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", final, err)
	}
	return entries, nil
}

// one stats or resolves a single path.
func (im *Image) one(ctx context.Context, p string, follow bool) (Inode, error) {
	res, err := im.ResolveAll(ctx, []Request{{Path: p, Follow: follow}})
	if err != nil {
		return Inode{}, err
	}
	return res[0].Inode, res[0].Err
}

// CheckPath validates a path that will be placed, quoted, on a
// debugfs command line. debugfs reads its commands line by line and its
// parser ends a quoted argument at a double quote, so control characters
// (newlines above all) and quotes are refused rather than escaped: no path
// can smuggle a second command or argument into a debugfs script.
func CheckPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case p[0] != '/':
		return fmt.Errorf("path %q is not absolute", p)
	case len(p) > ext4MaxPathLen:
		return fmt.Errorf("path of %d bytes is too long", len(p))
	}
	for _, c := range []byte(p) {
		switch {
		case c == '\n' || c == '\r':
			return fmt.Errorf("path %q contains a line break", p)
		case c < 0x20 || c == 0x7f:
			return fmt.Errorf("path %q contains a control character", p)
		case c == '"':
			return fmt.Errorf("path %q contains a double quote", p)
		}
	}
	return nil
}

// ext4Quote quotes a path checked by CheckPath for debugfs.
func ext4Quote(p string) string { return `"` + p + `"` }

// ext4InodeArg names an inode by number, debugfs's "<ino>" syntax.
func ext4InodeArg(ino uint64) string { return fmt.Sprintf("<%d>", ino) }
