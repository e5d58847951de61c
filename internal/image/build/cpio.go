package build

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Mode bits of the newc format (the classic Unix st_mode encoding).
const (
	cpioTypeDir     = 0o040000
	cpioTypeFile    = 0o100000
	cpioTypeSymlink = 0o120000
	cpioTypeCharDev = 0o020000
	cpioTrailerName = "TRAILER!!!"
	cpioMagic       = "070701"
	cpioHeaderLen   = 110
)

// cpioWriter writes a deterministic "newc" (SVR4, no CRC) cpio archive, the
// format the Linux kernel unpacks as an initramfs. Every entry is owned by
// 0:0, has one link, and carries the same fixed mtime; inode numbers are
// assigned sequentially. Identical calls therefore produce identical bytes.
//
// Entries are written in call order: callers add parent directories before
// their children.
type cpioWriter struct {
	w      io.Writer
	mtime  uint32
	ino    uint32
	closed bool
	err    error
}

// newCPIOWriter returns a writer stamping every entry with mtime (seconds
// since the epoch).
func newCPIOWriter(w io.Writer, mtime uint32) *cpioWriter {
	return &cpioWriter{w: w, mtime: mtime}
}

// cpioHeader is the variable part of one newc header.
type cpioHeader struct {
	name      string
	mode      uint32 // type and permission bits
	size      uint32
	rdevMajor uint32
	rdevMinor uint32
	omitInode bool // the trailer has inode 0
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(cpioHeader{name: name, mode: cpioTypeDir | uint32(perm.Perm())}, nil)
}

// File adds a regular file with the given contents.
func (c *cpioWriter) File(name string, perm fs.FileMode, data []byte) error {
	if uint64(len(data)) > 0xffffffff {
		return fmt.Errorf("cpio: %s: file too large for newc (%d bytes)", name, len(data))
	}
	return c.entry(cpioHeader{name: name, mode: cpioTypeFile | uint32(perm.Perm()), size: uint32(len(data))}, data)
}

// Symlink adds a symbolic link name pointing at target.
func (c *cpioWriter) Symlink(name, target string) error {
	return c.entry(cpioHeader{name: name, mode: cpioTypeSymlink | 0o777, size: uint32(len(target))}, []byte(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.entry(cpioHeader{name: name, mode: cpioTypeCharDev | uint32(perm.Perm()), rdevMajor: major, rdevMinor: minor}, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return c.err
	}
	err := c.entry(cpioHeader{name: cpioTrailerName, omitInode: true}, nil)
	c.closed = true
	return err
}

// entry writes one header, its name and its data, each padded to 4 bytes.
func (c *cpioWriter) entry(h cpioHeader, data []byte) error {
	if c.err != nil {
		return c.err
	}
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name, err := cpioName(h.name)
	if err != nil {
		return err
	}
	ino := uint32(0)
	if !h.omitInode {
		c.ino++
		ino = c.ino
	}
	nlink := uint32(1)
	if h.mode&0o170000 == cpioTypeDir {
		nlink = 2
	}
	fields := [13]uint32{
		ino, h.mode, 0 /* uid */, 0 /* gid */, nlink, c.mtime, h.size,
		0, 0, /* dev major, minor */
		h.rdevMajor, h.rdevMinor,
		uint32(len(name) + 1), 0, /* check */
	}
	buf := make([]byte, 0, cpioHeaderLen+len(name)+4)
	buf = append(buf, cpioMagic...)
	for _, f := range fields {
		buf = fmt.Appendf(buf, "%08X", f)
	}
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = appendPad(buf, len(buf))
	if _, err := c.w.Write(buf); err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
		return c.err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := c.w.Write(data); err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
		return c.err
	}
	if pad := appendPad(nil, len(data)); len(pad) > 0 {
		if _, err := c.w.Write(pad); err != nil {
			c.err = fmt.Errorf("cpio: %w", err)
			return c.err
		}
	}
	return nil
}

// cpioName validates and normalises an archive member name: relative, clean,
// no leading "/" (the kernel accepts both; relative is conventional).
func cpioName(name string) (string, error) {
	if name == cpioTrailerName {
		return name, nil
	}
	n := strings.TrimPrefix(name, "/")
	if n == "" || !fs.ValidPath(n) {
		return "", fmt.Errorf("cpio: invalid member name %q", name)
	}
	return n, nil
}

// appendPad appends zero bytes to b until n (the length so far of the padded
// unit) is a multiple of 4.
func appendPad(b []byte, n int) []byte {
	for ; n%4 != 0; n++ {
		b = append(b, 0)
	}
	return b
}
