package viewer

import (
	"bytes"
	"errors"
	"testing"
)

// step is one turn of an RFB exchange seen by the filter: bytes the server
// sent, or bytes the client sent with what of them may pass.
type step struct {
	server []byte
	client []byte
	want   []byte // for client steps
}

func srv(b ...byte) step { return step{server: b} }

// cli is a client step whose bytes all pass.
func cli(b ...byte) step { return step{client: b, want: b} }

// dropped is a client step the filter drops whole.
func dropped(b ...byte) step { return step{client: b, want: []byte{}} }

var (
	version33 = []byte("RFB 003.003\n")
	version37 = []byte("RFB 003.007\n")
	version38 = []byte("RFB 003.008\n")
)

// messages is a client→server message stream after the handshake, with
// its expected view-only output.
func messages() []step {
	return []step{
		cli(append([]byte{0, 0, 0, 0}, make([]byte, 16)...)...),                   // SetPixelFormat
		cli(2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21),                       // SetEncodings ×2
		dropped(4, 1, 0, 0, 0, 0, 0, 0x61),                                        // KeyEvent
		cli(3, 0, 0, 0, 0, 0, 0, 16, 0, 16),                                       // FramebufferUpdateRequest
		dropped(5, 1, 0, 10, 0, 20),                                               // PointerEvent
		dropped(6, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'),                            // ClientCutText
		dropped(6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe, 1, 2),                         // extended clipboard (len -2)
		cli(248, 0, 0, 0, 0, 0, 0, 0, 2, 7, 7),                                    // ClientFence
		dropped(255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30),                         // QEMU extended key
		dropped(append([]byte{251, 0, 4, 0, 3, 0, 1, 0}, make([]byte, 16)...)...), // SetDesktopSize, 1 screen
		dropped(250, 0, 1, 2),                                                     // xvp reboot
		cli(150, 1, 0, 0, 0, 0, 0, 16, 0, 16),                                     // EnableContinuousUpdates
		cli(255, 1, 0, 2, 1, 2, 0, 0, 0xac, 0x44),                                 // QEMU audio set format
	}
}

// handshake38 is an RFB 3.8 handshake with security None.
func handshake38() []step {
	return []step{
		srv(version38...), cli(version38...),
		srv(1, securityNone), cli(securityNone),
		srv(0, 0, 0, 0), cli(1), // SecurityResult ok; ClientInit shared
	}
}

// play runs steps through a fresh filter, the client's bytes in chunks of
// chunk, and checks what passes; it returns the first error.
func play(t *testing.T, steps []step, chunk int) error {
	t.Helper()
	f := &inputFilter{}
	for i, s := range steps {
		if s.client == nil {
			if err := f.Server(s.server); err != nil {
				return err
			}
			continue
		}
		var got []byte
		for p := s.client; len(p) > 0; {
			n := min(chunk, len(p))
			out, err := f.Filter(p[:n])
			if err != nil {
				return err
			}
			got = append(got, out...)
			p = p[n:]
		}
		if !bytes.Equal(got, s.want) {
			t.Fatalf("chunk %d, step %d: passed %v, want %v", chunk, i, got, s.want)
		}
	}
	return nil
}

func TestInputFilterWholeAndSplit(t *testing.T) {
	steps := append(handshake38(), messages()...)
	for _, chunk := range []int{1 << 20, 1, 2, 3, 5, 7, 13} {
		if err := play(t, steps, chunk); err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
	}
}

// The client's units may straddle its messages: the filter holds only a
// header and passes what it can.
func TestInputFilterAcrossMessages(t *testing.T) {
	f := &inputFilter{}
	var in, want []byte
	for _, s := range append(handshake38(), messages()...) {
		if s.client == nil {
			continue
		}
		in = append(in, s.client...)
		want = append(want, s.want...)
	}
	// Feed the server's handshake as the client reaches each point.
	server := [][]byte{version38, {1, securityNone}}
	if err := f.Server(server[0]); err != nil {
		t.Fatal(err)
	}
	out, err := f.Filter(in[:12])
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Server(server[1]); err != nil {
		t.Fatal(err)
	}
	rest, err := f.Filter(in[12:])
	if err != nil {
		t.Fatal(err)
	}
	if got := append(out, rest...); !bytes.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// Each handshake the filter follows, as the server leads it.
func TestInputFilterHandshakes(t *testing.T) {
	auth := bytes.Repeat([]byte{4}, 16) // a VNC auth response full of KeyEvent bytes
	challenge := make([]byte, 16)
	tests := map[string][]step{
		"3.8 vnc auth": {
			srv(version38...), cli(version38...),
			srv(2, securityNone, securityVNCAuth), cli(securityVNCAuth),
			srv(challenge...), cli(auth...),
			srv(0, 0, 0, 0), cli(1),
		},
		"3.7 none": {
			srv(version38...), cli(version37...),
			srv(1, securityNone), cli(securityNone), cli(1),
		},
		"3.3 server, 3.3 client, none": {
			srv(version33...), cli(version33...),
			srv(0, 0, 0, securityNone), cli(1),
		},
		"3.8 server, 3.3 client, vnc auth": {
			srv(version38...), cli(version33...),
			srv(0, 0, 0, securityVNCAuth), srv(challenge...), cli(auth...),
			srv(0, 0, 0, 0), cli(1),
		},
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			for _, chunk := range []int{1 << 20, 1, 5} {
				if err := play(t, append(steps, messages()...), chunk); err != nil {
					t.Fatalf("chunk %d: %v", chunk, err)
				}
			}
		})
	}
}

// What the filter refuses: anything not a handshake it follows, a client
// that gets ahead of the server or contradicts it, and unknown messages.
func TestInputFilterRefuses(t *testing.T) {
	tests := map[string][]step{
		"client first":              {cli(version38...)},
		"unknown client version":    {srv(version38...), cli([]byte("RFB 003.005\n")...)},
		"client version garbage":    {srv(version38...), cli([]byte("RFB 003.0x8\n")...)},
		"server version garbage":    {srv([]byte("RFB 004.001\n")...)},
		"server speaks out of turn": {srv(version38...), srv(1)},
		// A 3.3 server chooses the security type: a client that claims
		// 3.8 would be one byte out of step with it.
		"3.8 client, 3.3 server": {srv(version33...), cli(version38...)},
		"3.7 client, 3.3 server": {srv(version33...), cli(version37...)},
		"security before offer":  {srv(version38...), cli(version38...), cli(securityNone)},
		"type not offered": {
			srv(version38...), cli(version38...), srv(1, securityVNCAuth), cli(securityNone),
		},
		"type offered but unknown": {
			srv(version38...), cli(version38...), srv(2, securityNone, 18), cli(18),
		},
		"3.3 server chooses tls": {srv(version33...), cli(version33...), srv(0, 0, 0, 18)},
		// The server answered as 3.3 although the client asked for 3.8:
		// read as a 3.8 type list, that is a refusal, after which the
		// client has nothing to say.
		"server ignores the client's version": {
			srv(version38...), cli(version38...), srv(0, 0, 0, securityNone), cli(1),
		},
		"3.3 server refuses, client goes on": {
			srv(version33...), cli(version33...), srv(0, 0, 0, 0), cli(1),
		},
		"unknown message": append(handshake38(), cli(0x63)),
		"qemu subtype 9":  append(handshake38(), cli(255, 9, 0, 0)),
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			if err := play(t, steps, 1<<20); !errors.Is(err, errUnsupportedRFB) {
				t.Fatalf("err = %v, want %v", err, errUnsupportedRFB)
			}
		})
	}
}
