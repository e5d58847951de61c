package viewer

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Client→server RFB message types (RFC 6143 §7.5 and common extensions).
const (
	rfbSetPixelFormat     = 0
	rfbSetEncodings       = 2
	rfbUpdateRequest      = 3
	rfbKeyEvent           = 4
	rfbPointerEvent       = 5
	rfbClientCutText      = 6
	rfbContinuousUpdates  = 150
	rfbClientFence        = 248
	rfbXVP                = 250
	rfbSetDesktopSize     = 251
	rfbGII                = 253
	rfbQEMU               = 255
	rfbQEMUExtKeyEvent    = 0
	rfbQEMUAudio          = 1
	rfbQEMUAudioSetFormat = 2
)

// errUnsupportedRFB reports client traffic a view-only bridge cannot parse
// and therefore refuses rather than forward blindly.
var errUnsupportedRFB = errors.New("unsupported rfb client traffic in view-only mode")

// rfbPhase is where the client side of the RFB stream is.
type rfbPhase int

const (
	phaseVersion    rfbPhase = iota // 12-byte ProtocolVersion
	phaseSecurity                   // 1-byte security type
	phaseVNCAuth                    // 16-byte VNC authentication response
	phaseClientInit                 // 1-byte shared flag
	phaseMessages                   // normal client→server messages
)

// inputFilter parses the client→server RFB stream (3.7/3.8, security None
// or VNC authentication) and drops input messages: key and pointer events,
// cut text, and the extensions that control the guest (QEMU key events,
// xvp, desktop resize, GII). Bytes are streamed: only a message's header is
// held, so memory stays bounded whatever the message size.
type inputFilter struct {
	phase     rfbPhase
	hdr       []byte // header bytes of the current unit, not yet emitted
	remaining int64  // body bytes of the current unit still to pass or drop
	drop      bool   // whether the current unit is dropped
}

// Filter returns the bytes of p that may reach the server. out is a new
// slice (p is not modified).
func (f *inputFilter) Filter(p []byte) ([]byte, error) {
	out := make([]byte, 0, len(p))
	for {
		if f.remaining > 0 {
			n := min(int64(len(p)), f.remaining)
			if !f.drop {
				out = append(out, p[:n]...)
			}
			p = p[n:]
			f.remaining -= n
			if f.remaining > 0 {
				return out, nil // p is exhausted
			}
		}
		u, err := f.unit()
		if err != nil {
			return nil, err
		}
		if len(f.hdr) < u.need {
			if len(p) == 0 {
				return out, nil
			}
			take := min(u.need-len(f.hdr), len(p))
			f.hdr = append(f.hdr, p[:take]...)
			p = p[take:]
			continue
		}
		out = f.complete(out, u)
	}
}

// complete emits (or drops) the buffered header of unit u and arranges for
// its body to follow.
func (f *inputFilter) complete(out []byte, u unit) []byte {
	if !u.drop {
		out = append(out, f.hdr...)
	}
	f.remaining = u.total - int64(len(f.hdr))
	f.drop = u.drop
	f.hdr = f.hdr[:0]
	f.phase = u.next
	return out
}

// unit describes one handshake step or message of the client stream.
type unit struct {
	need  int      // header bytes needed to know total (read on while fewer)
	total int64    // full length once need bytes are known
	drop  bool     // whether the unit is input to drop
	next  rfbPhase // phase after this unit
}

// unit describes the unit starting with f.hdr.
func (f *inputFilter) unit() (unit, error) {
	h := f.hdr
	switch f.phase {
	case phaseVersion:
		if len(h) < 12 {
			return unit{need: 12}, nil
		}
		if v := string(h[:12]); v != "RFB 003.007\n" && v != "RFB 003.008\n" {
			return unit{}, fmt.Errorf("%w: protocol version %q", errUnsupportedRFB, v)
		}
		return unit{need: 12, total: 12, next: phaseSecurity}, nil
	case phaseSecurity:
		if len(h) < 1 {
			return unit{need: 1}, nil
		}
		switch h[0] {
		case 1: // None
			return unit{need: 1, total: 1, next: phaseClientInit}, nil
		case 2: // VNC authentication
			return unit{need: 1, total: 1, next: phaseVNCAuth}, nil
		}
		return unit{}, fmt.Errorf("%w: security type %d", errUnsupportedRFB, h[0])
	case phaseVNCAuth:
		return unit{need: 16, total: 16, next: phaseClientInit}, nil
	case phaseClientInit:
		return unit{need: 1, total: 1, next: phaseMessages}, nil
	}
	if len(h) < 1 {
		return unit{need: 1}, nil
	}
	u, err := clientMessage(h)
	u.next = phaseMessages
	return u, err
}

// clientMessage sizes the client→server message whose first bytes are h
// (at least one).
func clientMessage(h []byte) (unit, error) {
	fixed := func(n int64, drop bool) (unit, error) { return unit{need: 1, total: n, drop: drop}, nil }
	// prefixed reads a length field at off once n header bytes are known.
	prefixed := func(n int, drop bool, size func([]byte) int64) (unit, error) {
		if len(h) < n {
			return unit{need: n}, nil
		}
		return unit{need: n, total: int64(n) + size(h), drop: drop}, nil
	}
	be16 := func(b []byte) int64 { return int64(binary.BigEndian.Uint16(b)) }
	switch h[0] {
	case rfbSetPixelFormat:
		return fixed(20, false)
	case rfbSetEncodings:
		return prefixed(4, false, func(h []byte) int64 { return 4 * be16(h[2:]) })
	case rfbUpdateRequest, rfbContinuousUpdates:
		return fixed(10, false)
	case rfbKeyEvent:
		return fixed(8, true)
	case rfbPointerEvent:
		return fixed(6, true)
	case rfbClientCutText: // a negative length is the extended clipboard's
		return prefixed(8, true, func(h []byte) int64 {
			n := int64(int32(binary.BigEndian.Uint32(h[4:])))
			return max(n, -n)
		})
	case rfbClientFence:
		return prefixed(9, false, func(h []byte) int64 { return int64(h[8]) })
	case rfbXVP:
		return fixed(4, true)
	case rfbSetDesktopSize:
		return prefixed(8, true, func(h []byte) int64 { return 16 * int64(h[6]) })
	case rfbGII:
		return prefixed(4, true, func(h []byte) int64 { return be16(h[2:]) })
	case rfbQEMU:
		return qemuMessage(h)
	}
	return unit{}, fmt.Errorf("%w: message type %d", errUnsupportedRFB, h[0])
}

// qemuMessage sizes a QEMU client message: extended key events are input,
// audio control is not.
func qemuMessage(h []byte) (unit, error) {
	if len(h) < 4 {
		return unit{need: 4}, nil
	}
	switch h[1] {
	case rfbQEMUExtKeyEvent:
		return unit{need: 4, total: 12, drop: true}, nil
	case rfbQEMUAudio:
		if binary.BigEndian.Uint16(h[2:]) == rfbQEMUAudioSetFormat {
			return unit{need: 4, total: 10}, nil
		}
		return unit{need: 4, total: 4}, nil
	}
	return unit{}, fmt.Errorf("%w: qemu message subtype %d", errUnsupportedRFB, h[1])
}
