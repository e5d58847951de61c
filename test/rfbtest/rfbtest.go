// Package rfbtest is a minimal RFB (VNC) client for tests and benchmarks
// that need to prove a VNC stream works end to end: the RFB 3.8 handshake
// with security None, a framebuffer update request, and reading the raw
// update that answers it (RFC 6143); and a scripted RFB server (Server)
// for tests of what a client's bytes become at a VNC server.
package rfbtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ServerInit is what the server says about its framebuffer.
type ServerInit struct {
	Width, Height uint16
	BitsPerPixel  uint8
}

// Handshake performs an RFB 3.8 handshake with security None over c
// (3.7 or later on the server's side) and returns ServerInit.
func Handshake(c io.ReadWriter) (ServerInit, error) {
	var si ServerInit
	ver := make([]byte, 12)
	if _, err := io.ReadFull(c, ver); err != nil {
		return si, fmt.Errorf("read RFB version: %w", err)
	}
	if !strings.HasPrefix(string(ver), "RFB 003.") || string(ver) < "RFB 003.007\n" {
		return si, fmt.Errorf("server RFB version %q (want 3.7 or later)", ver)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return si, err
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil || n[0] == 0 {
		return si, fmt.Errorf("read security types: %d %v", n[0], err)
	}
	types := make([]byte, n[0])
	if _, err := io.ReadFull(c, types); err != nil {
		return si, err
	}
	if !strings.ContainsRune(string(types), 1) {
		return si, fmt.Errorf("security None not offered: %v", types)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return si, err
	}
	var res uint32
	if err := binary.Read(c, binary.BigEndian, &res); err != nil || res != 0 {
		return si, fmt.Errorf("security result %d: %v", res, err)
	}
	if _, err := c.Write([]byte{1}); err != nil { // ClientInit: shared
		return si, err
	}
	var init struct {
		W, H    uint16
		Pixel   [16]byte // bits-per-pixel first
		NameLen uint32
	}
	if err := binary.Read(c, binary.BigEndian, &init); err != nil {
		return si, fmt.Errorf("read ServerInit: %w", err)
	}
	if init.NameLen > 1<<16 {
		return si, fmt.Errorf("ServerInit name of %d bytes", init.NameLen)
	}
	if _, err := io.CopyN(io.Discard, c, int64(init.NameLen)); err != nil {
		return si, err
	}
	return ServerInit{Width: init.W, Height: init.H, BitsPerPixel: init.Pixel[0]}, nil
}

// RequestUpdate asks for a full (not incremental) update of a rectangle.
// Without SetEncodings, the server answers in raw encoding.
func RequestUpdate(c io.Writer, x, y, w, h uint16) error {
	req := []byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(req[2:], x)
	binary.BigEndian.PutUint16(req[4:], y)
	binary.BigEndian.PutUint16(req[6:], w)
	binary.BigEndian.PutUint16(req[8:], h)
	_, err := c.Write(req)
	return err
}

// ReadUpdate skips server messages until a FramebufferUpdate, then copies
// its raw pixels (bytesPerPixel each) to pixels and returns how many bytes
// they were.
func ReadUpdate(c io.Reader, bytesPerPixel int, pixels io.Writer) (int64, error) {
	// The server may send other messages first (x11vnc sends the
	// clipboard, ServerCutText, when it changes).
	var typ [1]byte
	for {
		if _, err := io.ReadFull(c, typ[:]); err != nil {
			return 0, fmt.Errorf("read message type: %w", err)
		}
		if typ[0] == 0 { // FramebufferUpdate
			break
		}
		if err := SkipServerMessage(c, typ[0]); err != nil {
			return 0, err
		}
	}
	var hdr struct {
		_     uint8
		Rects uint16
	}
	if err := binary.Read(c, binary.BigEndian, &hdr); err != nil {
		return 0, fmt.Errorf("read update header: %w", err)
	}
	if hdr.Rects == 0 {
		return 0, errors.New("FramebufferUpdate with no rectangles")
	}
	var total int64
	for range hdr.Rects {
		var r struct {
			X, Y, W, H uint16
			Encoding   int32
		}
		if err := binary.Read(c, binary.BigEndian, &r); err != nil {
			return total, err
		}
		if r.Encoding != 0 {
			return total, fmt.Errorf("rectangle encoding %d, want raw", r.Encoding)
		}
		m, err := io.CopyN(pixels, c, int64(r.W)*int64(r.H)*int64(bytesPerPixel))
		total += m
		if err != nil {
			return total, fmt.Errorf("read pixels: %w", err)
		}
	}
	return total, nil
}

// SkipServerMessage reads past a server message of type typ other than
// FramebufferUpdate (RFC 6143 §7.6).
func SkipServerMessage(c io.Reader, typ byte) error {
	switch typ {
	case 1: // SetColourMapEntries
		var h struct {
			_      uint8
			First  uint16
			Colors uint16
		}
		if err := binary.Read(c, binary.BigEndian, &h); err != nil {
			return err
		}
		_, err := io.CopyN(io.Discard, c, int64(h.Colors)*6)
		return err
	case 2: // Bell
		return nil
	case 3: // ServerCutText
		var h struct {
			_   [3]uint8
			Len uint32
		}
		if err := binary.Read(c, binary.BigEndian, &h); err != nil {
			return err
		}
		if h.Len > 1<<20 {
			return fmt.Errorf("ServerCutText of %d bytes", h.Len)
		}
		_, err := io.CopyN(io.Discard, c, int64(h.Len))
		return err
	default:
		return fmt.Errorf("unexpected server message type %d", typ)
	}
}
