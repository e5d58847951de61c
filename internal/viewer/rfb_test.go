package viewer

import (
	"bytes"
	"errors"
	"testing"
)

// clientStream is a client→server RFB stream with its expected view-only
// output.
func clientStream() (in, want []byte) {
	var i, w bytes.Buffer
	both := func(b ...byte) { i.Write(b); w.Write(b) }
	dropped := func(b ...byte) { i.Write(b) }
	both([]byte("RFB 003.008\n")...)
	both(1)                                                  // security None
	both(1)                                                  // ClientInit shared
	both(append([]byte{0, 0, 0, 0}, make([]byte, 16)...)...) // SetPixelFormat
	both(2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21)     // SetEncodings ×2
	dropped(4, 1, 0, 0, 0, 0, 0, 0x61)                       // KeyEvent
	both(3, 0, 0, 0, 0, 0, 0, 16, 0, 16)                     // FramebufferUpdateRequest
	dropped(5, 1, 0, 10, 0, 20)                              // PointerEvent
	dropped(6, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c')           // ClientCutText
	dropped(6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe, 1, 2)        // extended clipboard (len -2)
	both(248, 0, 0, 0, 0, 0, 0, 0, 2, 7, 7)                  // ClientFence
	dropped(255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30)        // QEMU extended key
	dropped(251, 0, 4, 0, 3, 0, 1, 0)                        // SetDesktopSize, 1 screen
	dropped(make([]byte, 16)...)
	dropped(250, 0, 1, 2)                      // xvp reboot
	both(150, 1, 0, 0, 0, 0, 0, 16, 0, 16)     // EnableContinuousUpdates
	both(255, 1, 0, 2, 1, 2, 0, 0, 0xac, 0x44) // QEMU audio set format
	return i.Bytes(), w.Bytes()
}

func TestInputFilterWholeAndSplit(t *testing.T) {
	in, want := clientStream()
	for _, chunk := range []int{len(in), 1, 2, 3, 5, 7, 13} {
		f := &inputFilter{}
		var got []byte
		for p := in; len(p) > 0; {
			n := min(chunk, len(p))
			out, err := f.Filter(p[:n])
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			got = append(got, out...)
			p = p[n:]
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("chunk %d:\n got %v\nwant %v", chunk, got, want)
		}
	}
}

func TestInputFilterVNCAuth(t *testing.T) {
	in := append([]byte("RFB 003.008\n\x02"), bytes.Repeat([]byte{4}, 16)...) // auth response full of 4s
	in = append(in, 1, 4, 1, 0, 0, 0, 0, 0, 0x61)
	out, err := (&inputFilter{}).Filter(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := in[:len(in)-8]; !bytes.Equal(out, want) {
		t.Fatalf("got %v, want %v", out, want)
	}
}

func TestInputFilterRefusesUnknown(t *testing.T) {
	for name, in := range map[string][]byte{
		"rfb 3.3":       []byte("RFB 003.003\n"),
		"security tls":  []byte("RFB 003.008\n\x12"),
		"unknown msg":   []byte("RFB 003.008\n\x01\x01\x63"),
		"qemu subtype9": []byte("RFB 003.008\n\x01\x01\xff\x09\x00\x00"),
	} {
		if _, err := (&inputFilter{}).Filter(in); !errors.Is(err, errUnsupportedRFB) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}
