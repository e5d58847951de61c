package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// SkipMarker is the line a Reader returns in place of bytes the log no
// longer keeps.
func SkipMarker(n int64) string {
	return fmt.Sprintf("\n[hearth: %d bytes of console output skipped: the log keeps the boot head and the latest output]\n", n)
}

// Reader reads a log from a logical offset. It holds no file open between
// calls (a segment rotated away is never kept alive by a reader), so any
// number of readers may follow a log while it is written.
type Reader struct {
	dir     string
	off     int64
	pending []byte // the rest of a skip marker
}

// NewReader reads the log in dir from offset off.
func NewReader(dir string, off int64) *Reader { return &Reader{dir: dir, off: off} }

// Offset is the logical offset of the next byte Read returns from the log.
func (r *Reader) Offset() int64 { return r.off }

// Marking reports whether Read has more of a skip marker to return before
// the byte at Offset.
func (r *Reader) Marking() bool { return len(r.pending) > 0 }

// Read reads what the log holds from the reader's offset. At the log's
// current end it returns 0, io.EOF; a follower waits and calls again.
// Where the bytes at the offset are no longer kept it returns
// SkipMarker(how many) and goes on from the oldest byte kept. An offset
// past the end waits, as at the end, until the log reaches it.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	// A segment may be rotated away between the listing and the open:
	// list again. More than a few times in a row means something else.
	for range 8 {
		l, err := scan(r.dir)
		if err != nil {
			return 0, fmt.Errorf("console log: %w", err)
		}
		if r.off >= l.end() {
			return 0, io.EOF
		}
		seg, ok := l.head, r.off < l.head.size
		if !ok {
			for _, s := range l.tail {
				if r.off >= s.start && r.off < s.end() {
					seg, ok = s, true
					break
				}
			}
		}
		if !ok {
			// In the gap between the head and the kept tail.
			start := l.tailStart()
			r.pending = []byte(SkipMarker(start - r.off))
			r.off = start
			return r.Read(p)
		}
		n, err := readAt(seg.path, p[:min(int64(len(p)), seg.end()-r.off)], r.off-seg.start)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		r.off += int64(n)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, fmt.Errorf("console log: %w", err)
		}
		// The file was shorter than listed: replaced meanwhile; list again.
	}
	return 0, io.EOF
}

func readAt(path string, p []byte, off int64) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(p, off)
}

// Tail returns up to the last n bytes the log keeps. They are contiguous:
// when the kept tail is shorter than n and bytes were dropped before it,
// only the kept tail is returned.
func Tail(dir string, n int64) ([]byte, error) {
	b, _, err := tail(dir, n)
	return b, err
}

// TailLines is Tail starting at a line boundary: unless the bytes begin at
// the log's first one, what precedes their first newline (maybe the end
// of a line whose start is not among them) is left out.
func TailLines(dir string, n int64) ([]byte, error) {
	b, from, err := tail(dir, n)
	if from > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b, err
}

// tail is Tail, also returning the offset of the first byte.
func tail(dir string, n int64) ([]byte, int64, error) {
	info, err := Stat(dir)
	if err != nil {
		return nil, 0, err
	}
	from := max(info.Size-n, 0)
	if info.Skipped() > 0 && from < info.TailStart {
		from = info.TailStart
	}
	r := NewReader(dir, from)
	buf := make([]byte, 0, info.Size-from)
	for int64(len(buf)) < info.Size-from {
		k, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err == io.EOF {
			break
		}
		if err != nil {
			return buf, from, err
		}
	}
	return buf, from, nil
}
