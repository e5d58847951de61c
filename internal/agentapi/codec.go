package agentapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxLineSize is the largest message line accepted, excluding its newline.
const MaxLineSize = 1 << 20

// readBufferSize is the Decoder's buffer; longer lines are assembled from
// several reads, up to MaxLineSize.
const readBufferSize = 64 << 10

// Errors returned by Decoder.Decode for a bad line. After either of them
// the stream is still in sync and the next Decode reads the next line.
var (
	// ErrLineTooLong means a line exceeded MaxLineSize; it was discarded.
	ErrLineTooLong = errors.New("line too long")
	// ErrMalformed means a line was not a valid envelope.
	ErrMalformed = errors.New("malformed message")
)

// Encoder writes envelopes as lines. It is safe for concurrent use; each
// envelope is written with a single Write call.
type Encoder struct {
	mu sync.Mutex
	w  io.Writer
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Encode writes env followed by a newline.
func (e *Encoder) Encode(env Envelope) error {
	b, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("agentapi: encode %s: %w", env.Type, err)
	}
	if len(b) > MaxLineSize {
		return fmt.Errorf("agentapi: encode %s: %w", env.Type, ErrLineTooLong)
	}
	b = append(b, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.w.Write(b); err != nil {
		return fmt.Errorf("agentapi: write %s: %w", env.Type, err)
	}
	return nil
}

// Decoder reads envelopes from lines. It is not safe for concurrent use.
type Decoder struct {
	r *bufio.Reader
	// strict: a line longer than MaxLineSize is not read to its end (the
	// host ends the session at once, so skipping it would only let the
	// guest make it read without bound).
	strict bool
	size   int // bytes of the last line read, without its line ending
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: bufio.NewReaderSize(r, readBufferSize)}
}

// newHostDecoder returns a strict Decoder, for the host's side.
func newHostDecoder(r io.Reader) *Decoder {
	d := NewDecoder(r)
	d.strict = true
	return d
}

// Decode reads the next envelope. A line longer than MaxLineSize yields
// ErrLineTooLong and one that is not a valid envelope yields ErrMalformed;
// after those the caller may go on decoding. io.EOF means the stream ended
// between lines and io.ErrUnexpectedEOF that it ended inside one; any other
// error comes from the underlying reader.
func (d *Decoder) Decode() (Envelope, error) {
	line, err := d.readLine()
	d.size = len(line)
	if err != nil {
		return Envelope{}, err
	}
	var env Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if env.Type == "" {
		return Envelope{}, fmt.Errorf("%w: missing type", ErrMalformed)
	}
	return env, nil
}

// readLine returns the next line without its line ending, holding at most
// MaxLineSize+readBufferSize bytes in memory.
func (d *Decoder) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := d.r.ReadSlice('\n')
		line = append(line, frag...)
		n := len(line)
		if err == nil {
			n-- // the newline
		}
		if n > MaxLineSize {
			if errors.Is(err, bufio.ErrBufferFull) && !d.strict {
				if derr := d.discardLine(); derr != nil {
					return nil, derr
				}
			}
			return nil, ErrLineTooLong
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(line[:n], []byte("\r")), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(line) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, io.EOF
		default:
			return nil, err
		}
	}
}

// discardLine skips input up to and including the next newline. It returns
// nil at end of stream, so that the next Decode reports io.EOF.
func (d *Decoder) discardLine() error {
	for {
		_, err := d.r.ReadSlice('\n')
		switch {
		case err == nil, errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return err
		}
	}
}
