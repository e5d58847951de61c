package rfbtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
)

// Server is a scripted RFB server for tests of what reaches a VNC server:
// it announces Version, runs the handshake of Minor (3, 7 or 8; 0 means
// the version the client picked), as servers that know only one version
// do whatever the client says, offers security None, sends a ServerInit
// and reports every client message it parses (RFC 6143 §7.5 and the
// extensions hearth's view-only filter knows) until one it cannot parse or
// the end of the connection.
type Server struct {
	Version       string // announced, e.g. "RFB 003.003\n"
	Minor         int
	Width, Height uint16
	// Messages receives each client message, whole.
	Messages chan Message
}

// Message is one client→server message.
type Message struct {
	Type  byte
	Bytes []byte // the whole message, type byte first
}

// Input reports whether m is input a view-only viewer must never send:
// key and pointer events, cut text, QEMU key events, xvp, desktop size
// and GII messages.
func (m Message) Input() bool {
	switch m.Type {
	case 4, 5, 6, 250, 251, 253:
		return true
	case 255:
		return len(m.Bytes) > 1 && m.Bytes[1] == 0
	}
	return false
}

// Listen serves every connection to a loopback listener with s and
// returns the listener; closing it stops accepting.
func (s *Server) Listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = s.Serve(c)
			}()
		}
	}()
	return ln, nil
}

// Serve runs one connection.
func (s *Server) Serve(c io.ReadWriter) error {
	if _, err := io.WriteString(c, s.Version); err != nil {
		return err
	}
	ver := make([]byte, 12)
	if _, err := io.ReadFull(c, ver); err != nil {
		return fmt.Errorf("read client version: %w", err)
	}
	minor := s.Minor
	if minor == 0 {
		if !strings.HasPrefix(string(ver), "RFB 003.00") {
			return fmt.Errorf("client version %q", ver)
		}
		minor = int(ver[10] - '0')
	}
	if minor == 3 {
		if _, err := c.Write([]byte{0, 0, 0, 1}); err != nil { // None, no SecurityResult
			return err
		}
	} else {
		if _, err := c.Write([]byte{1, 1}); err != nil {
			return err
		}
		var t [1]byte
		if _, err := io.ReadFull(c, t[:]); err != nil {
			return fmt.Errorf("read security type: %w", err)
		}
		if t[0] != 1 {
			return fmt.Errorf("client chose security type %d", t[0])
		}
		if minor >= 8 {
			if _, err := c.Write([]byte{0, 0, 0, 0}); err != nil {
				return err
			}
		}
	}
	var shared [1]byte
	if _, err := io.ReadFull(c, shared[:]); err != nil {
		return fmt.Errorf("read ClientInit: %w", err)
	}
	init := make([]byte, 24)
	binary.BigEndian.PutUint16(init[0:], s.Width)
	binary.BigEndian.PutUint16(init[2:], s.Height)
	copy(init[4:], []byte{32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0})
	if _, err := c.Write(init); err != nil { // no name
		return err
	}
	for {
		m, err := readClientMessage(c)
		if err != nil {
			return err
		}
		if s.Messages != nil {
			s.Messages <- m
		}
	}
}

// readClientMessage reads one client message whole.
func readClientMessage(r io.Reader) (Message, error) {
	buf := make([]byte, 1, 32)
	if _, err := io.ReadFull(r, buf); err != nil {
		return Message{}, err
	}
	more := func(n int) error {
		start := len(buf)
		buf = append(buf, make([]byte, n)...)
		_, err := io.ReadFull(r, buf[start:])
		return err
	}
	be16 := func(off int) int { return int(binary.BigEndian.Uint16(buf[off:])) }
	var err error
	switch t := buf[0]; t {
	case 0: // SetPixelFormat
		err = more(19)
	case 2: // SetEncodings
		if err = more(3); err == nil {
			err = more(4 * be16(2))
		}
	case 3, 150: // FramebufferUpdateRequest, EnableContinuousUpdates
		err = more(9)
	case 4: // KeyEvent
		err = more(7)
	case 5: // PointerEvent
		err = more(5)
	case 6: // ClientCutText; a negative length is the extended clipboard's
		if err = more(7); err == nil {
			n := int32(binary.BigEndian.Uint32(buf[4:]))
			if n < 0 {
				n = -n
			}
			if n > 1<<20 {
				return Message{}, fmt.Errorf("ClientCutText of %d bytes", n)
			}
			err = more(int(n))
		}
	case 248: // ClientFence
		if err = more(8); err == nil {
			err = more(int(buf[8]))
		}
	case 250: // xvp
		err = more(3)
	case 251: // SetDesktopSize
		if err = more(7); err == nil {
			err = more(16 * int(buf[6]))
		}
	case 253: // GII
		if err = more(3); err == nil {
			err = more(be16(2))
		}
	case 255: // QEMU
		if err = more(3); err == nil {
			switch {
			case buf[1] == 0: // extended key event
				err = more(8)
			case buf[1] == 1 && be16(2) == 2: // audio set format
				err = more(6)
			case buf[1] != 1:
				return Message{}, fmt.Errorf("qemu message subtype %d", buf[1])
			}
		}
	default:
		return Message{}, fmt.Errorf("unknown client message type %d", t)
	}
	if err != nil {
		return Message{}, err
	}
	return Message{Type: buf[0], Bytes: buf}, nil
}
