package workapi

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Output frame kinds (see the package comment).
const (
	FrameStdout  byte = 1
	FrameStderr  byte = 2
	FrameDropped byte = 3
	FrameExit    byte = 4
)

// FrameHeaderSize is a frame's kind and payload length.
const FrameHeaderSize = 5

// maxFramePayload: an output frame's offset and data, or a JSON frame.
const maxFramePayload = 8 + MaxFrameData

// ErrFrame is a frame that breaks the format: an unknown kind, a payload
// too long for its kind, or a malformed JSON payload.
var ErrFrame = errors.New("workapi: bad output frame")

// Frame is one decoded output frame.
type Frame struct {
	Kind byte
	// Offset and Data, for FrameStdout and FrameStderr.
	Offset int64
	Data   []byte
	// Dropped, for FrameDropped; Exit, for FrameExit.
	Dropped *Dropped
	Exit    *Exit
}

// WriteOutput writes an output frame of kind (FrameStdout or FrameStderr)
// for data (at most MaxFrameData bytes) at offset.
func WriteOutput(w io.Writer, kind byte, offset int64, data []byte) error {
	if len(data) > MaxFrameData {
		return fmt.Errorf("workapi: %d bytes in one frame, at most %d", len(data), MaxFrameData)
	}
	hdr := make([]byte, FrameHeaderSize+8, FrameHeaderSize+8+len(data))
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:5], uint32(8+len(data)))
	binary.BigEndian.PutUint64(hdr[5:13], uint64(offset))
	_, err := w.Write(append(hdr, data...))
	return err
}

// WriteJSONFrame writes a FrameDropped or FrameExit frame.
func WriteJSONFrame(w io.Writer, kind byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxFramePayload {
		return fmt.Errorf("workapi: frame of %d bytes", len(b))
	}
	hdr := make([]byte, FrameHeaderSize, FrameHeaderSize+len(b))
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:5], uint32(len(b)))
	_, err = w.Write(append(hdr, b...))
	return err
}

// FrameReader decodes frames from a stream the other side wrote; every
// frame is checked, so a reader can hand its frames on as they are.
type FrameReader struct {
	r   io.Reader
	hdr [FrameHeaderSize]byte
	buf []byte
}

// NewFrameReader reads frames from r.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// Next returns the next frame; its Data is valid until the following call.
// At a clean end of the stream it returns io.EOF; a stream cut inside a
// frame is io.ErrUnexpectedEOF.
func (fr *FrameReader) Next() (Frame, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return Frame{}, err
	}
	kind, n := fr.hdr[0], binary.BigEndian.Uint32(fr.hdr[1:5])
	if n > maxFramePayload {
		return Frame{}, fmt.Errorf("%w: %d-byte payload", ErrFrame, n)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	p := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	f := Frame{Kind: kind}
	switch kind {
	case FrameStdout, FrameStderr:
		if n < 8 {
			return Frame{}, fmt.Errorf("%w: output frame without an offset", ErrFrame)
		}
		f.Offset = int64(binary.BigEndian.Uint64(p[:8]))
		if f.Offset < 0 {
			return Frame{}, fmt.Errorf("%w: negative offset", ErrFrame)
		}
		f.Data = p[8:]
	case FrameDropped:
		f.Dropped = new(Dropped)
		if err := json.Unmarshal(p, f.Dropped); err != nil || f.Dropped.From < 0 || f.Dropped.To < f.Dropped.From {
			return Frame{}, fmt.Errorf("%w: dropped %q", ErrFrame, p)
		}
	case FrameExit:
		f.Exit = new(Exit)
		if err := json.Unmarshal(p, f.Exit); err != nil {
			return Frame{}, fmt.Errorf("%w: exit: %v", ErrFrame, err)
		}
	default:
		return Frame{}, fmt.Errorf("%w: kind %d", ErrFrame, kind)
	}
	return f, nil
}
