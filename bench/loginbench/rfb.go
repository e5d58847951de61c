package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// wsStream reads a WebSocket's binary messages as one byte stream and sends
// each Write as one binary message, as noVNC does.
type wsStream struct {
	ctx context.Context
	ws  *websocket.Conn
	r   io.Reader
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.r == nil {
			typ, r, err := s.ws.Reader(s.ctx)
			if err != nil {
				return 0, err
			}
			if typ != websocket.MessageBinary {
				return 0, fmt.Errorf("got a %v message", typ)
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if errors.Is(err, io.EOF) {
			s.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (s *wsStream) Write(p []byte) (int, error) {
	if err := s.ws.Write(s.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// viewerTimes are the moments a viewer connection reached, and what the
// first framebuffer update carried.
type viewerTimes struct {
	open   time.Time // WebSocket upgraded (hearth dials the guest's VNC after this)
	init   time.Time // ServerInit read: the RFB handshake is done
	frame  time.Time // the whole first FramebufferUpdate read
	width  int
	height int
	bytes  int64 // pixel bytes in that update
	// colours is how many distinct pixel values it holds (up to
	// maxColours): one means an empty screen.
	colours int
}

const maxColours = 1000

// useViewer does what a viewer page does first: it opens the login's
// WebSocket from hearth's own origin, completes an RFB 3.8 handshake
// (security None, shared ClientInit, ServerInit), asks for the whole
// screen (non-incremental) and reads the FramebufferUpdate that answers.
func useViewer(ctx context.Context, client *http.Client, wsURL, origin string) (viewerTimes, error) {
	var vt viewerTimes
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{
		HTTPClient:   client,
		HTTPHeader:   http.Header{"Origin": {origin}},
		Subprotocols: []string{"binary"},
	})
	if err != nil {
		return vt, fmt.Errorf("websocket: %w", err)
	}
	defer ws.CloseNow()
	ws.SetReadLimit(-1) // hearth sends up to one bridge chunk per message
	vt.open = time.Now()
	c := &wsStream{ctx: ctx, ws: ws}

	ver := make([]byte, 12)
	if _, err := io.ReadFull(c, ver); err != nil {
		return vt, fmt.Errorf("read RFB version: %w", err)
	}
	if !strings.HasPrefix(string(ver), "RFB 003.") || string(ver) < "RFB 003.007\n" {
		return vt, fmt.Errorf("server RFB version %q (want 3.7 or later)", ver)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return vt, err
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil || n[0] == 0 {
		return vt, fmt.Errorf("read security types: %d %v", n[0], err)
	}
	types := make([]byte, n[0])
	if _, err := io.ReadFull(c, types); err != nil {
		return vt, err
	}
	if !strings.ContainsRune(string(types), 1) {
		return vt, fmt.Errorf("security None not offered: %v", types)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return vt, err
	}
	var res uint32
	if err := binary.Read(c, binary.BigEndian, &res); err != nil || res != 0 {
		return vt, fmt.Errorf("security result %d: %v", res, err)
	}
	if _, err := c.Write([]byte{1}); err != nil { // ClientInit: shared
		return vt, err
	}
	var si struct {
		W, H    uint16
		Pixel   [16]byte // bits-per-pixel first
		NameLen uint32
	}
	if err := binary.Read(c, binary.BigEndian, &si); err != nil {
		return vt, fmt.Errorf("read ServerInit: %w", err)
	}
	if si.NameLen > 1<<16 {
		return vt, fmt.Errorf("ServerInit name of %d bytes", si.NameLen)
	}
	if _, err := io.CopyN(io.Discard, c, int64(si.NameLen)); err != nil {
		return vt, err
	}
	vt.init = time.Now()
	vt.width, vt.height = int(si.W), int(si.H)
	bpp := int64(si.Pixel[0]) / 8
	if bpp == 0 || si.W == 0 || si.H == 0 {
		return vt, fmt.Errorf("ServerInit %dx%d at %d bits per pixel", si.W, si.H, si.Pixel[0])
	}

	// FramebufferUpdateRequest, not incremental, the whole screen. No
	// SetEncodings was sent, so the server answers in raw encoding.
	req := []byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(req[6:], si.W)
	binary.BigEndian.PutUint16(req[8:], si.H)
	if _, err := c.Write(req); err != nil {
		return vt, err
	}
	// The pixels are kept and looked at after the frame is timed.
	var px bytes.Buffer
	px.Grow(int(si.W) * int(si.H) * int(bpp))
	var typ [1]byte
	for {
		if _, err := io.ReadFull(c, typ[:]); err != nil {
			return vt, fmt.Errorf("read message type: %w", err)
		}
		if typ[0] == 0 { // FramebufferUpdate
			break
		}
		if err := skipServerMessage(c, typ[0]); err != nil {
			return vt, err
		}
	}
	var hdr struct {
		_     uint8
		Rects uint16
	}
	if err := binary.Read(c, binary.BigEndian, &hdr); err != nil {
		return vt, fmt.Errorf("read update header: %w", err)
	}
	if hdr.Rects == 0 {
		return vt, errors.New("FramebufferUpdate with no rectangles")
	}
	for range hdr.Rects {
		var r struct {
			X, Y, W, H uint16
			Encoding   int32
		}
		if err := binary.Read(c, binary.BigEndian, &r); err != nil {
			return vt, err
		}
		if r.Encoding != 0 {
			return vt, fmt.Errorf("rectangle encoding %d, want raw", r.Encoding)
		}
		m, err := io.CopyN(&px, c, int64(r.W)*int64(r.H)*bpp)
		vt.bytes += m
		if err != nil {
			return vt, fmt.Errorf("read pixels: %w", err)
		}
	}
	vt.frame = time.Now()
	vt.colours = countColours(px.Bytes(), int(bpp))
	_ = ws.Close(websocket.StatusNormalClosure, "")
	return vt, nil
}

// skipServerMessage reads past a server message other than
// FramebufferUpdate (RFC 6143 §7.6).
func skipServerMessage(c io.Reader, typ byte) error {
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

// countColours counts the distinct pixel values in pix (pixels of size
// bytes), up to maxColours.
func countColours(pix []byte, size int) int {
	seen := map[string]bool{}
	for len(pix) >= size && len(seen) < maxColours {
		if !seen[string(pix[:size])] {
			seen[string(pix[:size])] = true
		}
		pix = pix[size:]
	}
	return len(seen)
}
