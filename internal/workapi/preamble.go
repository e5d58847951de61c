package workapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"
)

// The preamble's lines: "\nHEARTHDATA1 challenge NONCE\n" from the host,
// "\nHEARTHDATA1 hello NONCE PROOF\n" from the guest (the leading newline
// ends whatever half line stale bytes left), NONCE the base64 of
// nonceSize random bytes and PROOF hex(HMAC-SHA256(token, proofContext ||
// nonce)). The context keeps a data-channel proof from ever answering a
// control-channel challenge, and the other way round.
const (
	preambleMagic = "HEARTHDATA1 "
	proofContext  = "hearth data channel\x00"
	nonceSize     = 32
	// maxPreambleLine bounds a preamble line; longer runs of bytes
	// without a newline are stale data and skipped.
	maxPreambleLine = 256
	// challengeEvery is how often the host repeats its challenge while
	// unanswered: the guest may have swallowed the first one while its
	// earlier connection's HTTP/2 server was failing on it.
	challengeEvery = 500 * time.Millisecond
	// maxStale bounds the stale bytes the host skips before a hello.
	maxStale = 64 << 20
)

// ErrBadProof is a hello whose proof does not match the token.
var ErrBadProof = errors.New("workapi: data channel hello with a wrong proof")

func proof(token, nonce []byte) string {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(proofContext))
	m.Write(nonce)
	return hex.EncodeToString(m.Sum(nil))
}

// bufferedConn is a net.Conn whose reads first drain what the preamble
// read ahead.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// readLine reads one line. A line longer than maxPreambleLine is stale
// data: it is skipped whole and returned as nil. skipped counts the bytes
// read. The line is valid until the next read.
func readLine(r *bufio.Reader, skipped *int64) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	*skipped += int64(len(line))
	if err == nil {
		if len(line) > maxPreambleLine {
			return nil, nil
		}
		return line, nil
	}
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.ReadSlice('\n')
		*skipped += int64(len(line))
	}
	return nil, err
}

// HostPreamble authenticates the agent at the other end of a fresh data
// channel connection with token and returns the connection to speak
// HTTP/2 on. ctx bounds it; on error conn is closed.
func HostPreamble(ctx context.Context, conn net.Conn, token []byte) (net.Conn, error) {
	c, err := hostPreamble(ctx, conn, token)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("workapi: data channel preamble: %w", err)
	}
	return c, nil
}

func hostPreamble(ctx context.Context, conn net.Conn, token []byte) (net.Conn, error) {
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	n64 := base64.StdEncoding.EncodeToString(nonce)
	challenge := []byte("\n" + preambleMagic + "challenge " + n64 + "\n")
	want := []byte(preambleMagic + "hello " + n64 + " " + proof(token, nonce) + "\n")
	wantPrefix := want[:len(want)-len(proof(token, nonce))-1]

	// The challenge is repeated until answered; the writer stops before
	// the connection is handed on.
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(challengeEvery)
		defer t.Stop()
		for {
			// A write the guest does not take in time is given up and
			// tried again; a cut one is a stale line to the guest.
			_ = conn.SetWriteDeadline(time.Now().Add(challengeEvery))
			if _, err := conn.Write(challenge); err != nil && !isTimeout(err) {
				return
			}
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	stopWriter := func() {
		close(done)
		<-stopped
		_ = conn.SetWriteDeadline(time.Time{})
	}
	stopWatch := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stopWatch()

	r := bufio.NewReaderSize(conn, 4096)
	var skipped int64
	for {
		line, err := readLine(r, &skipped)
		if err != nil {
			stopWriter()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if skipped > maxStale {
			stopWriter()
			return nil, fmt.Errorf("%d bytes without an answer", skipped)
		}
		if !bytes.HasPrefix(line, wantPrefix) {
			continue // stale, or answers an earlier challenge
		}
		stopWriter()
		if !hmac.Equal(line, want) {
			return nil, ErrBadProof
		}
		if !stopWatch() {
			return nil, ctx.Err()
		}
		_ = conn.SetReadDeadline(time.Time{})
		return &bufferedConn{Conn: conn, r: r}, nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// GuestPreamble waits on conn for the host's challenge (skipping anything
// else), answers it with token and returns the connection to serve HTTP/2
// on. Challenges the host repeated before it saw the answer are skipped as
// the connection is read on. Give conn a deadline to bound the wait.
func GuestPreamble(conn net.Conn, token []byte) (net.Conn, error) {
	r := bufio.NewReaderSize(conn, 4096)
	var skipped int64
	for {
		line, err := readLine(r, &skipped)
		if err != nil {
			return nil, fmt.Errorf("workapi: data channel preamble: %w", err)
		}
		n64, ok := bytes.CutPrefix(line, []byte(preambleMagic+"challenge "))
		if !ok {
			continue
		}
		n64 = bytes.TrimSuffix(n64, []byte("\n"))
		nonce, err := base64.StdEncoding.DecodeString(string(n64))
		if err != nil || len(nonce) != nonceSize {
			continue
		}
		hello := "\n" + preambleMagic + "hello " + string(n64) + " " + proof(token, nonce) + "\n"
		if _, err := conn.Write([]byte(hello)); err != nil {
			return nil, fmt.Errorf("workapi: data channel preamble: %w", err)
		}
		if err := skipRepeats(r, string(n64)); err != nil {
			return nil, err
		}
		return &bufferedConn{Conn: conn, r: r}, nil
	}
}

// skipRepeats consumes the repetitions of the challenge just answered
// that precede the host's first HTTP/2 bytes.
func skipRepeats(r *bufio.Reader, n64 string) error {
	repeat := preambleMagic + "challenge " + n64 + "\n"
	for {
		if b, err := r.Peek(1); err == nil && b[0] == '\n' {
			_, _ = r.Discard(1)
			continue
		}
		p, err := r.Peek(len(preambleMagic))
		if err != nil {
			return fmt.Errorf("workapi: data channel preamble: %w", err)
		}
		if string(p) != preambleMagic {
			return nil
		}
		p, err = r.Peek(len(repeat))
		if err != nil {
			return fmt.Errorf("workapi: data channel preamble: %w", err)
		}
		if string(p) != repeat {
			return fmt.Errorf("workapi: data channel preamble: unexpected %q after the hello", p)
		}
		_, _ = r.Discard(len(repeat))
	}
}
