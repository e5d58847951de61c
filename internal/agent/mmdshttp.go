package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/safetext"
)

// The agent talks to MMDS (and to the guest browser's DevTools endpoint,
// devtools.go) with the few lines of HTTP/1.1 that needs (a request
// without a body, one header, an answer with a Content-Length, a chunked
// body or one that ends with the connection) instead of net/http's
// client: the control channel's work stays apart from the HTTP/2 stack
// that serves the data channel (data.go), and small.

// dialFunc opens a connection, like net.Dialer.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// defaultMMDSDial dials MMDS directly, never through a proxy.
var defaultMMDSDial dialFunc = (&net.Dialer{Timeout: mmdsTimeout}).DialContext

// maxHeaderBytes bounds an answer's status line and headers.
const maxHeaderBytes = 16 << 10

// httpAnswer is a response: its status code, status line and body.
type httpAnswer struct {
	code   int
	status string // e.g. "404 Not Found"
	body   []byte
}

// httpDo sends method path to host (HOST:PORT) with one header, on a fresh
// connection, and reads the answer (a body of at most maxBody bytes).
func httpDo(ctx context.Context, dial dialFunc, host, method, path, header, value string, maxBody int) (httpAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, mmdsTimeout)
	defer cancel()
	conn, done, err := dialBounded(ctx, dial, host)
	if err != nil {
		return httpAnswer{}, err
	}
	defer done()
	req := method + " " + path + " HTTP/1.1\r\nHost: " + hostOnly(host) + "\r\n" + header + ": " + value +
		"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return httpAnswer{}, err
	}
	return readAnswer(bufio.NewReader(io.LimitReader(conn, int64(maxHeaderBytes+maxBody+64<<10))), maxBody)
}

// dialBounded dials addr over TCP and bounds the connection by ctx: its
// deadline, if any, and an immediate one once ctx is done. done releases
// the bound and closes the connection.
func dialBounded(ctx context.Context, dial dialFunc, addr string) (conn net.Conn, done func(), err error) {
	conn, err = dial(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return conn, func() { stop(); conn.Close() }, nil
}

func hostOnly(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return h
}

// readHead reads a response's status line and headers, and calls header
// with each header's lower-cased name and trimmed value.
func readHead(r *bufio.Reader, header func(name, value string) error) (code int, status string, err error) {
	line, err := readLine(r)
	if err != nil {
		return 0, "", err
	}
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || len(status) < 3 {
		return 0, "", fmt.Errorf("malformed status line %q", safetext.Clip(line, 80))
	}
	if code, err = strconv.Atoi(status[:3]); err != nil {
		return 0, "", fmt.Errorf("malformed status line %q", safetext.Clip(line, 80))
	}
	for n := 0; ; n++ {
		h, err := readLine(r)
		if err != nil {
			return code, status, err
		}
		if h == "" {
			return code, status, nil
		}
		if n > 100 {
			return code, status, errors.New("too many header lines")
		}
		k, v, _ := strings.Cut(h, ":")
		if err := header(strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)); err != nil {
			return code, status, err
		}
	}
}

// readAnswer parses an HTTP/1.1 response.
func readAnswer(r *bufio.Reader, maxBody int) (httpAnswer, error) {
	length, chunked := -1, false
	code, status, err := readHead(r, func(k, v string) error {
		switch k {
		case "content-length":
			var err error
			if length, err = strconv.Atoi(v); err != nil || length < 0 {
				return fmt.Errorf("malformed Content-Length %q", safetext.Clip(v, 40))
			}
		case "transfer-encoding":
			chunked = strings.EqualFold(v, "chunked")
		}
		return nil
	})
	a := httpAnswer{code: code, status: status}
	if err != nil {
		return a, err
	}
	switch {
	case chunked:
		a.body, err = readChunked(r, maxBody)
	case length >= 0:
		if length > maxBody {
			return a, fmt.Errorf("answer larger than %d bytes", maxBody)
		}
		a.body = make([]byte, length)
		_, err = io.ReadFull(r, a.body)
	default: // until the connection ends
		a.body, err = io.ReadAll(io.LimitReader(r, int64(maxBody)+1))
		if err == nil && len(a.body) > maxBody {
			err = fmt.Errorf("answer larger than %d bytes", maxBody)
		}
	}
	return a, err
}

func readChunked(r *bufio.Reader, maxBody int) ([]byte, error) {
	var body []byte
	for {
		line, err := readLine(r)
		if err != nil {
			return nil, err
		}
		sz, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseUint(strings.TrimSpace(sz), 16, 31)
		if err != nil {
			return nil, fmt.Errorf("malformed chunk size %q", safetext.Clip(line, 40))
		}
		if n == 0 {
			return body, nil
		}
		if len(body)+int(n) > maxBody {
			return nil, fmt.Errorf("answer larger than %d bytes", maxBody)
		}
		chunk := make([]byte, n)
		if _, err := io.ReadFull(r, chunk); err != nil {
			return nil, err
		}
		body = append(body, chunk...)
		if _, err := readLine(r); err != nil { // the chunk's CRLF
			return nil, err
		}
	}
}

// readLine reads one CRLF- (or LF-) terminated line of at most
// maxHeaderBytes.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		part, isPrefix, err := r.ReadLine()
		if err != nil {
			if err == io.EOF && len(b) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		b = append(b, part...)
		if len(b) > maxHeaderBytes {
			return "", errors.New("header line too long")
		}
		if !isPrefix {
			return string(b), nil
		}
	}
}
