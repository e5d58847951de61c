// Package safetext makes text that came from an untrusted source (a guest:
// its agent's hello, error texts, its console) safe to store, to log and to
// print on a terminal: valid UTF-8, bounded in length, and without control
// characters, so that it cannot move a terminal's cursor, rewrite its title
// or clipboard, or reorder what is shown around it.
package safetext

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// unsafe reports whether r must not reach a terminal: C0 controls (ESC
// among them), DEL, C1 controls (a terminal may take U+009B for CSI), the
// line and paragraph separators, and the bidirectional embeddings,
// overrides and isolates that reorder the text around them.
func unsafe(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// removed reports whether Text removes r: what unsafe says, but line feeds
// and tabs.
func removed(r rune) bool { return unsafe(r) && r != '\n' && r != '\t' }

// Line returns s as one clean line of at most max bytes: invalid UTF-8
// becomes U+FFFD, tabs and line breaks become spaces and every other
// control character is removed. max <= 0 means no bound.
func Line(s string, max int) string {
	return clean(s, max, func(r rune) (rune, bool) {
		switch r {
		case '\t', '\n', '\r', 0x2028, 0x2029:
			return ' ', true
		}
		return r, !unsafe(r)
	})
}

// Text returns s as clean text of at most max bytes: like Line, but line
// feeds and tabs are kept (carriage returns are removed). max <= 0 means
// no bound.
func Text(s string, max int) string {
	return clean(s, max, func(r rune) (rune, bool) { return r, !removed(r) })
}

// Clip returns s as valid UTF-8 (each run of invalid bytes one U+FFFD)
// of at most max bytes, cut at a rune boundary. Unlike Line and Text it
// removes nothing: it is for text that is quoted (%q) or sent on in JSON,
// where control characters are escaped, and that must stay within a
// bound however its bytes are encoded. max <= 0 means no bound.
func Clip(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if max <= 0 || len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}

// IsClean reports whether Text would leave s as it is (ignoring length).
func IsClean(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, removed)
}

func clean(s string, max int, keep func(rune) (rune, bool)) string {
	var b strings.Builder
	if max > 0 && max < len(s) {
		b.Grow(max)
	} else {
		b.Grow(len(s))
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r, ok := keep(r); ok {
			if max > 0 && b.Len()+utf8.RuneLen(r) > max {
				break
			}
			b.WriteRune(r) // RuneError (invalid input) is written as U+FFFD
		}
	}
	return b.String()
}

// Writer passes text through to an underlying writer as Text cleans it,
// for streams (a guest's console) whose writes may split a UTF-8 sequence.
type Writer struct {
	w       io.Writer
	pending []byte // the start of a UTF-8 sequence cut by the last Write
	buf     []byte
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write cleans p and writes what is safe of it. It reports len(p) on
// success, whatever it removed.
func (w *Writer) Write(p []byte) (int, error) {
	in := p
	if len(w.pending) > 0 {
		in = append(w.pending, p...)
		w.pending = nil
	}
	out := w.buf[:0]
	for i := 0; i < len(in); {
		if !utf8.FullRune(in[i:]) {
			w.pending = append([]byte(nil), in[i:]...)
			break
		}
		r, size := utf8.DecodeRune(in[i:])
		i += size
		if !removed(r) {
			out = utf8.AppendRune(out, r)
		}
	}
	w.buf = out
	if _, err := w.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes U+FFFD for a UTF-8 sequence the stream ended inside. It does
// not close the underlying writer.
func (w *Writer) Close() error {
	if len(w.pending) == 0 {
		return nil
	}
	w.pending = nil
	_, err := w.w.Write([]byte(string(utf8.RuneError)))
	return err
}

// EscapeJSON rewrites, in JSON text, every character Text would remove
// (but the tabs and line feeds of indentation) as a \uXXXX escape. Such
// characters can only occur inside JSON strings, so the value is the
// same; only a terminal showing it is safe from them.
func EscapeJSON(b []byte) []byte {
	if !bytes.ContainsFunc(b, removed) {
		return b
	}
	out := make([]byte, 0, len(b)+32)
	for _, r := range string(b) {
		if removed(r) {
			out = fmt.Appendf(out, `\u%04x`, r)
			continue
		}
		out = utf8.AppendRune(out, r)
	}
	return out
}

// WriteJSON writes v to w as indented JSON and a line feed, with every
// character Text would remove from its strings escaped (EscapeJSON): what
// the command line prints of an answer that may carry a guest's text.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(EscapeJSON(b), '\n'))
	return err
}
