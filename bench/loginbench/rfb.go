package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/test/rfbtest"
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
	defer func() { _ = ws.CloseNow() }()
	ws.SetReadLimit(-1) // hearth sends up to one bridge chunk per message
	vt.open = time.Now()
	c := &wsStream{ctx: ctx, ws: ws}

	si, err := rfbtest.Handshake(c)
	if err != nil {
		return vt, err
	}
	vt.init = time.Now()
	vt.width, vt.height = int(si.Width), int(si.Height)
	bpp := int(si.BitsPerPixel) / 8
	if bpp == 0 || si.Width == 0 || si.Height == 0 {
		return vt, fmt.Errorf("ServerInit %dx%d at %d bits per pixel", si.Width, si.Height, si.BitsPerPixel)
	}
	if err := rfbtest.RequestUpdate(c, 0, 0, si.Width, si.Height); err != nil {
		return vt, err
	}
	// The pixels are kept and looked at after the frame is timed.
	var px bytes.Buffer
	px.Grow(int(si.Width) * int(si.Height) * bpp)
	vt.bytes, err = rfbtest.ReadUpdate(c, bpp, &px)
	if err != nil {
		return vt, err
	}
	vt.frame = time.Now()
	vt.colours = countColours(px.Bytes(), bpp)
	_ = ws.Close(websocket.StatusNormalClosure, "")
	return vt, nil
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
