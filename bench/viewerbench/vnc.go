package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
)

// The VNC-like server speaks just enough RFB to look like a guest's: it
// writes the 12-byte protocol version on connect. The client then picks a
// workload with a 9-byte command (a letter and a big-endian uint64):
//
//	'S' n  stream n bytes of framebuffer-like data, as fast as possible
//	'E' 0  echo: read echoSize-byte messages and write each back
//
// A client that sends nothing is an idle viewer. The server never closes
// first (a proxy may drop data it has queued when its target closes): it
// reads until the client goes.
const (
	rfbVersion = "RFB 003.008\n"
	cmdSize    = 9
	echoSize   = 64
	patternLen = 64 << 10
	chunkLen   = 4 * patternLen // one write
)

// command encodes a workload request.
func command(op byte, n uint64) []byte {
	b := make([]byte, cmdSize)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], n)
	return b
}

// framebuffer is chunkLen bytes: a pseudo-random 64 KiB pattern repeated,
// incompressible like a screen update encoded raw.
func framebuffer() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, chunkLen)
	for i := 0; i < patternLen; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := patternLen; i < chunkLen; i += patternLen {
		copy(b[i:], b[:patternLen])
	}
	return b
}

// serveVNC accepts connections on ln until it is closed.
func serveVNC(ln net.Listener) {
	fb := framebuffer()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = serveVNCConn(c, fb)
		}()
	}
}

func serveVNCConn(c net.Conn, fb []byte) error {
	if _, err := io.WriteString(c, rfbVersion); err != nil {
		return err
	}
	cmd := make([]byte, cmdSize)
	if _, err := io.ReadFull(c, cmd); err != nil {
		return err // an idle viewer that left
	}
	switch cmd[0] {
	case 'S':
		for left := binary.BigEndian.Uint64(cmd[1:]); left > 0; {
			n, err := c.Write(fb[:min(left, uint64(len(fb)))])
			if err != nil {
				return err
			}
			left -= uint64(n)
		}
		_, err := io.Copy(io.Discard, c) // until the client closes
		return err
	case 'E':
		msg := make([]byte, echoSize)
		for {
			if _, err := io.ReadFull(c, msg); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			if _, err := c.Write(msg); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown command %q", cmd[0])
	}
}
