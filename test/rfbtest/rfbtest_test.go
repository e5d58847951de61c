package rfbtest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
)

// serve plays an RFB 3.8 server with security types secTypes on c: after
// ClientInit it answers one update request with a clipboard message and a
// raw 4×2 update at 32 bits per pixel.
func serve(c net.Conn, secTypes []byte) {
	defer c.Close()
	c.Write([]byte("RFB 003.008\n"))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	c.Write(append([]byte{byte(len(secTypes))}, secTypes...))
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return
	}
	binary.Write(c, binary.BigEndian, uint32(0))
	io.ReadFull(c, buf[:1]) // ClientInit
	init := make([]byte, 24)
	binary.BigEndian.PutUint16(init[0:], 4)
	binary.BigEndian.PutUint16(init[2:], 2)
	init[4] = 32
	binary.BigEndian.PutUint32(init[20:], 1)
	c.Write(append(init, 'x'))
	if _, err := io.ReadFull(c, buf[:10]); err != nil || buf[0] != 3 {
		return
	}
	c.Write([]byte{3, 0, 0, 0, 0, 0, 0, 2, 'h', 'i'}) // ServerCutText "hi"
	upd := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 0, 0, 0}
	c.Write(append(upd, bytes.Repeat([]byte{7}, 4*2*4)...))
}

func TestHandshakeAndUpdate(t *testing.T) {
	client, server := net.Pipe()
	go serve(server, []byte{2, 1})
	defer client.Close()
	si, err := Handshake(client)
	if err != nil || si != (ServerInit{Width: 4, Height: 2, BitsPerPixel: 32}) {
		t.Fatalf("handshake: %+v %v", si, err)
	}
	if err := RequestUpdate(client, 0, 0, si.Width, si.Height); err != nil {
		t.Fatal(err)
	}
	var px bytes.Buffer
	n, err := ReadUpdate(client, 4, &px)
	if err != nil || n != 32 || !bytes.Equal(px.Bytes(), bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("update: %d bytes %v", n, err)
	}
}

func TestHandshakeWithoutSecurityNone(t *testing.T) {
	client, server := net.Pipe()
	go serve(server, []byte{2}) // VNC authentication only
	defer client.Close()
	if _, err := Handshake(client); err == nil || !strings.Contains(err.Error(), "security None not offered") {
		t.Fatalf("handshake: %v", err)
	}
}

// The scripted server runs the handshake it is told to, whatever the
// client claims, and reports each message whole.
func TestScriptedServer(t *testing.T) {
	for _, tt := range []struct {
		version string
		minor   int
	}{{"RFB 003.008\n", 0}, {"RFB 003.008\n", 8}, {"RFB 003.007\n", 7}} {
		client, server := net.Pipe()
		s := &Server{Version: tt.version, Minor: tt.minor, Width: 4, Height: 2, Messages: make(chan Message, 4)}
		done := make(chan error, 1)
		go func() { done <- s.Serve(server); server.Close() }()
		if tt.minor == 7 {
			// Handshake speaks 3.8; a 3.7 server sends no SecurityResult
			// for None, so play the client by hand.
			buf := make([]byte, 12)
			io.ReadFull(client, buf)
			client.Write([]byte("RFB 003.007\n"))
			io.ReadFull(client, buf[:2])
			client.Write([]byte{1, 1})
			io.ReadFull(client, make([]byte, 24))
		} else if si, err := Handshake(client); err != nil || si.Width != 4 || si.Height != 2 {
			t.Fatalf("%q: handshake %+v %v", tt.version, si, err)
		}
		key := []byte{4, 1, 0, 0, 0, 0, 0, 0x61}
		go func() {
			RequestUpdate(client, 0, 0, 4, 2)
			client.Write(key)
			client.Write([]byte{0x63}) // unknown: the server stops
		}()
		if m := <-s.Messages; m.Type != 3 || len(m.Bytes) != 10 || m.Input() {
			t.Fatalf("first message %+v", m)
		}
		if m := <-s.Messages; !bytes.Equal(m.Bytes, key) || !m.Input() {
			t.Fatalf("second message %+v", m)
		}
		if err := <-done; err == nil || !strings.Contains(err.Error(), "unknown client message type 99") {
			t.Fatalf("server ended with %v", err)
		}
		client.Close()
	}
}
