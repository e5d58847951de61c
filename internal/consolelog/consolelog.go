// Package consolelog keeps a VM's serial console (or other output a guest
// can make grow, such as Firecracker's own log) on disk within a fixed
// bound, whatever the guest writes and for however long: the first bytes
// (the boot head) are kept for good, the latest ones (the rolling tail) in
// at most two segment files, the older of which is removed when a third
// would begin. Every byte has a logical offset, its position in everything
// the log was given, so readers can start anywhere, resume and follow;
// a reader whose offset the tail has rolled past gets a marker line saying
// how many bytes were skipped instead of them.
//
// A log is a directory: "head" holds offsets [0, len(head)); each
// "tail.<offset>" holds the bytes from its (decimal) start offset on. The
// names are the only metadata, so a log written by one process is resumed
// by the next, and readers need nothing but the directory. One Writer
// writes a log at a time; any number of readers may read it meanwhile.
package consolelog

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Names of a log's files.
const (
	headName   = "head"
	tailPrefix = "tail."
)

// MinSegment is the smallest tail segment Limits allow.
const MinSegment = 4 << 10

// Limits bound a log on disk.
type Limits struct {
	// Max bounds the bytes the log's files hold together (head and tail).
	Max int64
	// Head is how many of the first bytes are kept for good; the rest of
	// Max is the rolling tail, in two segments of (Max-Head)/2 bytes.
	Head int64
}

// Segment is the size of one tail segment.
func (l Limits) Segment() int64 { return (l.Max - l.Head) / 2 }

// Validate says what is wrong with l, if anything.
func (l Limits) Validate() error {
	switch {
	case l.Head < 0:
		return fmt.Errorf("head must not be negative, got %d", l.Head)
	case l.Max <= l.Head:
		return fmt.Errorf("max (%d) must exceed head (%d)", l.Max, l.Head)
	case l.Segment() < MinSegment:
		return fmt.Errorf("max (%d) must leave at least %d bytes for the rolling tail after head (%d)", l.Max, 2*MinSegment, l.Head)
	}
	return nil
}

// segment is one file of a log as found on disk.
type segment struct {
	path  string
	start int64 // logical offset of its first byte
	size  int64
}

func (s segment) end() int64 { return s.start + s.size }

// layout is what a log's directory holds.
type layout struct {
	head segment   // start 0; size 0 when there is no head file yet
	tail []segment // ascending by start
}

// end is the logical offset after the last byte kept.
func (l layout) end() int64 {
	if n := len(l.tail); n > 0 {
		return l.tail[n-1].end()
	}
	return l.head.size
}

// tailStart is the offset of the first byte of the kept tail; bytes in
// [head.size, tailStart) were written and are no longer kept.
func (l layout) tailStart() int64 {
	if len(l.tail) > 0 {
		return l.tail[0].start
	}
	return l.head.size
}

// scan reads a log's layout. A missing directory is an empty log. A
// regular file in its place is read as a log that is all head: the plain
// console file hearth wrote before it bounded consoles.
//
// A directory listing is not a snapshot: one taken while the writer
// rotates may show an old segment and miss a newer one. The kept segments
// are always contiguous, so a listing with a hole is taken again.
func scan(dir string) (layout, error) {
	for range 100 {
		l, err := list(dir)
		if err != nil || l.contiguous() {
			return l, err
		}
	}
	return layout{}, fmt.Errorf("the segments of %s keep changing", dir)
}

// contiguous reports whether each kept segment begins where the one before
// it ends, and the first after the head.
func (l layout) contiguous() bool {
	for i, s := range l.tail {
		if i == 0 && s.start < l.head.size || i > 0 && s.start != l.tail[i-1].end() {
			return false
		}
	}
	return true
}

// list reads a log's directory once.
func list(dir string) (layout, error) {
	l := layout{head: segment{path: filepath.Join(dir, headName)}}
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	if fi.Mode().IsRegular() {
		l.head = segment{path: dir, size: fi.Size()}
		return l, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return l, err
	}
	for _, e := range entries {
		name := e.Name()
		seg := segment{path: filepath.Join(dir, name)}
		switch {
		case name == headName:
		case strings.HasPrefix(name, tailPrefix):
			start, err := strconv.ParseInt(strings.TrimPrefix(name, tailPrefix), 10, 64)
			if err != nil || start < 0 {
				continue // not one of ours
			}
			seg.start = start
		default:
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // rotated away since the listing
		}
		if err != nil {
			return l, err
		}
		seg.size = info.Size()
		if name == headName {
			l.head = seg
		} else {
			l.tail = append(l.tail, seg)
		}
	}
	slices.SortFunc(l.tail, func(a, b segment) int { return cmp.Compare(a.start, b.start) })
	return l, nil
}

func tailName(start int64) string { return tailPrefix + fmt.Sprintf("%020d", start) }

// Info describes a log.
type Info struct {
	// Size is the logical offset after the last byte written.
	Size int64
	// Head is the length of the boot head: offsets [0, Head) are kept
	// for good.
	Head int64
	// TailStart is the first offset of the rolling tail that is still
	// kept; bytes in [Head, TailStart) were dropped to stay in bounds.
	TailStart int64
	// Disk is the bytes the log's files hold.
	Disk int64
}

// Skipped is how many written bytes are no longer kept.
func (i Info) Skipped() int64 { return i.TailStart - i.Head }

// Stat describes the log in dir. A log that does not exist is empty.
func Stat(dir string) (Info, error) {
	l, err := scan(dir)
	if err != nil {
		return Info{}, fmt.Errorf("console log: %w", err)
	}
	disk := l.head.size
	for _, s := range l.tail {
		disk += s.size
	}
	return Info{Size: l.end(), Head: l.head.size, TailStart: l.tailStart(), Disk: disk}, nil
}
