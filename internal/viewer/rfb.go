package viewer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
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
	phaseSecurity                   // 3.7/3.8: 1-byte security type; 3.3: nothing
	phaseVNCAuth                    // 16-byte VNC authentication response
	phaseClientInit                 // 1-byte shared flag
	phaseMessages                   // normal client→server messages
)

// serverPhase is where the server side of the RFB handshake is.
type serverPhase int

const (
	serverVersion  serverPhase = iota // 12-byte ProtocolVersion
	serverWaits                       // nothing until the client's version
	serverSecurity                    // 3.3: u32 type; 3.7/3.8: count + types
	serverDone                        // the rest is not parsed
)

// Security types a view-only bridge can follow (RFC 6143 §7.2).
const (
	securityInvalid = 0
	securityNone    = 1
	securityVNCAuth = 2
)

// inputFilter follows both directions of an RFB handshake and drops the
// client's input messages: key and pointer events, cut text, and the
// extensions that control the guest (QEMU key events, xvp, desktop resize,
// GII). The protocol state comes from what the server sent, never from the
// client's word alone: the version the server announced bounds the one the
// client may pick (3.3, 3.7 or 3.8), a 3.3 server chooses the security
// type itself, and a 3.7/3.8 client may only pick a type the server
// offered. Client handshake bytes that arrive before the server message
// that gives them a meaning, or that do not fit it, end the viewer.
// Bytes are streamed: only a unit's header is held, so memory stays
// bounded whatever the message size. Filter and Server may run on
// different goroutines.
type inputFilter struct {
	mu sync.Mutex

	// Client side.
	phase     rfbPhase
	hdr       []byte // header bytes of the current unit, not yet emitted
	remaining int64  // body bytes of the current unit still to pass or drop
	drop      bool   // whether the current unit is dropped

	// Server side.
	sphase      serverPhase
	shdr        []byte // server handshake bytes of the current unit
	serverMinor int    // minor version the server announced
	minor       int    // minor version in use: the client's pick
	offered     []byte // security types a 3.7/3.8 server offered
	security    byte   // the security type in use, once known
	failed      bool   // the server refused the handshake
}

// Server follows the server→client bytes p. It must see every server byte,
// in order, before they reach the client: the client's answer to them is
// then always read in the state they set.
func (f *inputFilter) Server(p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(p) > 0 {
		switch f.sphase {
		case serverDone:
			return nil
		case serverWaits:
			return fmt.Errorf("%w: server sent %d bytes before the client's version", errUnsupportedRFB, len(p))
		}
		need := f.serverNeed()
		take := min(need-len(f.shdr), len(p))
		f.shdr = append(f.shdr, p[:take]...)
		p = p[take:]
		if len(f.shdr) < need {
			return nil
		}
		if f.serverNeed() > need { // a security type list's length is known now
			continue
		}
		if err := f.serverUnit(); err != nil {
			return err
		}
		f.shdr = f.shdr[:0]
	}
	return nil
}

// serverNeed is how many bytes the current server unit has.
func (f *inputFilter) serverNeed() int {
	switch {
	case f.sphase == serverVersion:
		return 12
	case f.minor == 3:
		return 4 // u32 security type
	case len(f.shdr) == 0:
		return 1 // number of security types
	default:
		return 1 + int(f.shdr[0])
	}
}

// serverUnit takes in the complete server unit in f.shdr.
func (f *inputFilter) serverUnit() error {
	h := f.shdr
	if f.sphase == serverVersion {
		minor, ok := rfbVersion(h)
		if !ok {
			return fmt.Errorf("%w: server protocol version %q", errUnsupportedRFB, h)
		}
		f.serverMinor, f.sphase = minor, serverWaits
		return nil
	}
	// serverSecurity
	f.sphase = serverDone
	if f.minor == 3 {
		t := binary.BigEndian.Uint32(h)
		switch t {
		case securityInvalid:
			f.failed = true
		case securityNone, securityVNCAuth:
			f.security = byte(t)
		default:
			return fmt.Errorf("%w: rfb 3.3 server chose security type %d", errUnsupportedRFB, t)
		}
		return nil
	}
	if h[0] == 0 {
		f.failed = true // a reason follows, then the server hangs up
		return nil
	}
	f.offered = append([]byte(nil), h[1:]...)
	return nil
}

// rfbVersion parses "RFB 003.xxx\n" and returns xxx.
func rfbVersion(v []byte) (int, bool) {
	if len(v) != 12 || string(v[:8]) != "RFB 003." || v[11] != '\n' {
		return 0, false
	}
	n := 0
	for _, d := range v[8:11] {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int(d-'0')
	}
	return n, true
}

// Filter returns the bytes of p that may reach the server. out is a new
// slice (p is not modified).
func (f *inputFilter) Filter(p []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
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
		if len(p) == 0 && len(f.hdr) == 0 {
			return out, nil // between units: wait for the client
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
		out, err = f.complete(out, u)
		if err != nil {
			return nil, err
		}
	}
}

// complete emits (or drops) the buffered header of unit u and arranges for
// its body to follow.
func (f *inputFilter) complete(out []byte, u unit) ([]byte, error) {
	if u.check != nil {
		if err := u.check(f.hdr); err != nil {
			return nil, err
		}
	}
	if !u.drop {
		out = append(out, f.hdr...)
	}
	f.remaining = u.total - int64(len(f.hdr))
	f.drop = u.drop
	f.hdr = f.hdr[:0]
	f.phase = u.next
	return out, nil
}

// unit describes one handshake step or message of the client stream.
type unit struct {
	need  int                // header bytes needed to know total (read on while fewer)
	total int64              // full length once need bytes are known
	drop  bool               // whether the unit is input to drop
	next  rfbPhase           // phase after this unit
	check func([]byte) error // run on the complete header before it is emitted
}

// unit describes the unit starting with f.hdr, in the state the server's
// bytes have set.
func (f *inputFilter) unit() (unit, error) {
	h := f.hdr
	switch f.phase {
	case phaseVersion:
		if f.sphase == serverVersion {
			return unit{}, fmt.Errorf("%w: client spoke before the server's version", errUnsupportedRFB)
		}
		return unit{need: 12, total: 12, next: phaseSecurity, check: f.clientVersion}, nil
	case phaseSecurity:
		switch {
		case f.sphase != serverDone:
			return unit{}, fmt.Errorf("%w: client spoke before the server's security message", errUnsupportedRFB)
		case f.failed:
			return unit{}, fmt.Errorf("%w: client spoke after the server refused the handshake", errUnsupportedRFB)
		case f.minor == 3: // the server chose; the client says nothing
			return unit{next: f.afterSecurity(f.security)}, nil
		}
		if len(h) < 1 {
			return unit{need: 1}, nil
		}
		t := h[0]
		if (t != securityNone && t != securityVNCAuth) || !bytes.Contains(f.offered, []byte{t}) {
			return unit{}, fmt.Errorf("%w: security type %d (server offered %v)", errUnsupportedRFB, t, f.offered)
		}
		return unit{need: 1, total: 1, next: f.afterSecurity(t)}, nil
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

// clientVersion checks the client's ProtocolVersion: 3.3, 3.7 or 3.8, and
// no later than the server's (RFC 6143 §7.1.1), and sets the version in use.
func (f *inputFilter) clientVersion(h []byte) error {
	minor, ok := rfbVersion(h)
	if !ok || (minor != 3 && minor != 7 && minor != 8) {
		return fmt.Errorf("%w: protocol version %q", errUnsupportedRFB, h)
	}
	if minor > f.serverMinor {
		return fmt.Errorf("%w: client claims rfb 3.%d, server announced 3.%d", errUnsupportedRFB, minor, f.serverMinor)
	}
	f.minor, f.sphase = minor, serverSecurity
	return nil
}

// afterSecurity is the client phase that follows security type t.
func (f *inputFilter) afterSecurity(t byte) rfbPhase {
	if t == securityVNCAuth {
		return phaseVNCAuth
	}
	return phaseClientInit
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
