package workapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

var token = []byte("0123456789abcdef0123456789abcdef")

// The host and the guest agree across stale bytes an earlier connection
// left (a long binary run, an old hello, a half line), and the HTTP/2
// bytes that follow pass through untouched.
func TestPreambleSkipsStaleBytes(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   net.Conn
		err error
	}
	gotGuest := make(chan res, 1)
	go func() {
		// Stale output of an earlier guest side, then the preamble.
		if _, err := guest.Write(append(bytes.Repeat([]byte{0, 1, 2}, 5000), "\n"+preambleMagic+"hello old proof\nhalf"...)); err != nil {
			gotGuest <- res{nil, err}
			return
		}
		c, err := GuestPreamble(guest, token)
		if err == nil {
			_, err = c.Write([]byte("from guest"))
		}
		gotGuest <- res{c, err}
	}()
	c, err := HostPreamble(ctx, host, token)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() { _, err := c.Write([]byte("PRI * HTTP/2.0\r\n")); wrote <- err }()
	got := make([]byte, len("from guest"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "from guest" {
		t.Fatalf("host read %q %v", got, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	g := <-gotGuest
	if g.err != nil {
		t.Fatal(g.err)
	}
	b := make([]byte, len("PRI * HTTP/2.0\r\n"))
	if _, err := io.ReadFull(g.c, b); err != nil || string(b) != "PRI * HTTP/2.0\r\n" {
		t.Fatalf("guest read %q %v", b, err)
	}
}

func TestPreambleWrongToken(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	go func() { _, _ = GuestPreamble(guest, []byte("another token, another token...")) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := HostPreamble(ctx, host, token); !errors.Is(err, ErrBadProof) {
		t.Fatalf("want ErrBadProof, got %v", err)
	}
}

func TestPreambleTimesOut(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	go func() { _, _ = io.Copy(io.Discard, guest) }() // reads, never answers
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	if _, err := HostPreamble(ctx, host, token); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a deadline error, got %v", err)
	}
}

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	code := 3
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(WriteOutput(&buf, FrameStdout, 0, []byte("a\n")))
	must(WriteOutput(&buf, FrameStderr, 2, []byte("b")))
	must(WriteJSONFrame(&buf, FrameDropped, Dropped{From: 3, To: 10}))
	must(WriteJSONFrame(&buf, FrameExit, Exit{Code: &code}))
	if err := WriteOutput(&buf, FrameStdout, 0, make([]byte, MaxFrameData+1)); err == nil {
		t.Fatal("an oversized frame was written")
	}
	fr := NewFrameReader(&buf)
	var got []string
	for {
		f, err := fr.Next()
		if err == io.EOF {
			break
		}
		must(err)
		switch f.Kind {
		case FrameStdout, FrameStderr:
			got = append(got, string(f.Data)+"@"+string(rune('0'+f.Offset)))
		case FrameDropped:
			got = append(got, "dropped")
		case FrameExit:
			got = append(got, "exit")
		}
	}
	if strings.Join(got, ",") != "a\n@0,b@2,dropped,exit" {
		t.Fatalf("frames %q", got)
	}
	for _, bad := range [][]byte{
		{9, 0, 0, 0, 0},                       // unknown kind
		{FrameStdout, 0, 0, 0, 2, 0, 0},       // no offset
		{FrameStdout, 0xff, 0, 0, 0},          // too long
		{FrameExit, 0, 0, 0, 1, '{'},          // bad JSON
		{FrameDropped, 0, 0, 0, 2, '{', '}'},  // fine JSON
		{FrameStdout, 0, 0, 0, 9, 0, 0, 0, 0}, // cut short
	} {
		_, err := NewFrameReader(bytes.NewReader(bad)).Next()
		if bad[0] == FrameDropped {
			if err != nil {
				t.Errorf("%v: %v", bad, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v decoded", bad)
		}
	}
}
