package consolelog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Writer appends to a log, keeping it within its Limits. It is not safe
// for concurrent use.
type Writer struct {
	dir  string
	lim  Limits
	l    layout
	cur  *os.File // the file being appended to: the head, or the newest segment
	head bool     // cur is the head
}

// Open opens the log in dir for appending, creating it if needed. A log
// left by an earlier Writer (an earlier daemon) is resumed where it ends;
// if lim is smaller than what it was written with, its oldest segments are
// removed until it fits.
func Open(dir string, lim Limits) (*Writer, error) {
	if err := lim.Validate(); err != nil {
		return nil, fmt.Errorf("console log limits: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	l, err := scan(dir)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	if l.head.path != filepath.Join(dir, headName) {
		return nil, fmt.Errorf("console log: %s is a file, not a log directory", dir)
	}
	w := &Writer{dir: dir, lim: lim, l: l}
	if err := w.trim(2); err != nil {
		return nil, err
	}
	return w, nil
}

// Size is the logical offset the next byte written gets.
func (w *Writer) Size() int64 { return w.l.end() }

// disk is the bytes the log's files hold.
func (w *Writer) disk() int64 {
	n := w.l.head.size
	for _, s := range w.l.tail {
		n += s.size
	}
	return n
}

// trim removes the oldest segments until at most keep are left and the
// log fits its bound; the newest segment, whose name records where the log
// ends, is never removed.
func (w *Writer) trim(keep int) error {
	for len(w.l.tail) > 1 && (len(w.l.tail) > keep || w.disk() > w.lim.Max) {
		if err := os.Remove(w.l.tail[0].path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("console log: %w", err)
		}
		w.l.tail = w.l.tail[1:]
	}
	return nil
}

// room is how many bytes the current file may still take, opening the
// next file when the current one is full.
func (w *Writer) room() (int64, error) {
	if len(w.l.tail) == 0 && w.l.head.size < w.lim.Head {
		if w.cur == nil {
			f, err := os.OpenFile(w.l.head.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return 0, fmt.Errorf("console log: %w", err)
			}
			w.cur, w.head = f, true
		}
		return w.lim.Head - w.l.head.size, nil
	}
	seg := w.lim.Segment()
	if n := len(w.l.tail); n > 0 && w.l.tail[n-1].size < seg {
		if w.cur == nil || w.head {
			if w.cur != nil {
				w.cur.Close()
			}
			f, err := os.OpenFile(w.l.tail[n-1].path, os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return 0, fmt.Errorf("console log: %w", err)
			}
			w.cur, w.head = f, false
		}
		return seg - w.l.tail[n-1].size, nil
	}
	// Begin a new segment. It is created empty before the oldest goes, so
	// the log's files always say where it ends, and the log never holds
	// more than its bound: the two kept segments are full, the new one
	// takes no space until the old one is removed.
	if w.cur != nil {
		w.cur.Close()
		w.cur = nil
	}
	start := w.l.end()
	path := filepath.Join(w.dir, tailName(start))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("console log: %w", err)
	}
	w.cur, w.head = f, false
	w.l.tail = append(w.l.tail, segment{path: path, start: start})
	if err := w.trim(2); err != nil {
		return 0, err
	}
	return seg, nil
}

// Write appends p. It fails only when a file cannot be written (a full
// disk): what was written before the failure counts, the rest of p does
// not, and a later Write goes on from there.
func (w *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		room, err := w.room()
		if err != nil {
			return written, err
		}
		k := int(min(room, int64(len(p))))
		n, err := w.cur.Write(p[:k])
		written += n
		if w.head {
			w.l.head.size += int64(n)
		} else {
			w.l.tail[len(w.l.tail)-1].size += int64(n)
		}
		if err != nil {
			return written, fmt.Errorf("console log: %w", err)
		}
		p = p[k:]
	}
	return written, nil
}

// Close closes the file being written. The log stays on disk.
func (w *Writer) Close() error {
	if w.cur == nil {
		return nil
	}
	err := w.cur.Close()
	w.cur = nil
	return err
}
