package workapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/safetext"
)

// The host's bounds on one VM's data channel: what the guest may make the
// host buffer (HTTP/2 receive windows), how large a response header block
// may be, and how long a connection may go silent before it is pinged and
// then given up.
const (
	clientConnWindow   = 8 << 20
	clientStreamWindow = 1 << 20
	clientMaxHeaders   = 64 << 10
	clientPingAfter    = 30 * time.Second
	clientPingTimeout  = 15 * time.Second
	// preambleTimeout bounds reaching and authenticating the agent once
	// the channel's socket answers.
	preambleTimeout = 30 * time.Second
	// maxErrorBody bounds an error answer's body.
	maxErrorBody = 64 << 10
)

// Dialer reaches a VM's data channel (vmm.DialData).
type Dialer func(ctx context.Context) (net.Conn, error)

// Error is an error answer from the agent: its status and message, the
// message made clean (package safetext).
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// Client calls one VM's work API over its data channel. It holds one
// HTTP/2 connection, made on first use and again whenever the last one
// broke (the guest rebooted, the agent restarted). It is safe for
// concurrent use.
type Client struct {
	dial  Dialer
	token []byte
	t     *http2.Transport

	mu     sync.Mutex
	cc     *http2.ClientConn
	closed bool
}

// NewClient returns a client that reaches the agent through dial and
// proves it with the VM's token.
func NewClient(dial Dialer, token []byte) *Client {
	t1 := &http.Transport{HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerConnection: clientConnWindow,
		MaxReceiveBufferPerStream:     clientStreamWindow,
	}}
	t, err := http2.ConfigureTransports(t1)
	if err != nil {
		panic("workapi: configure HTTP/2: " + err.Error()) // a fresh transport always configures
	}
	t.AllowHTTP = true
	t.MaxHeaderListSize = clientMaxHeaders
	t.ReadIdleTimeout, t.PingTimeout = clientPingAfter, clientPingTimeout
	return &Client{dial: dial, token: token, t: t}
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.cc != nil {
		return c.cc.Close()
	}
	return nil
}

// conn returns a usable connection, making one if needed. Callers
// serialise on the mutex while one is made, so a VM gets one connection.
func (c *Client) conn(ctx context.Context) (*http2.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("workapi: client closed")
	}
	if c.cc != nil && c.cc.CanTakeNewRequest() {
		return c.cc, nil
	}
	if c.cc != nil {
		c.cc.Close()
		c.cc = nil
	}
	raw, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, preambleTimeout)
	defer cancel()
	conn, err := HostPreamble(pctx, raw, c.token)
	if err != nil {
		return nil, err
	}
	cc, err := c.t.NewClientConn(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("workapi: start HTTP/2: %w", err)
	}
	c.cc = cc
	return cc, nil
}

// request is one call: method and path (with query), a body and its
// length (-1: unknown, streamed).
type request struct {
	method string
	path   string
	query  url.Values
	body   io.Reader
	length int64
	header http.Header
}

// do sends r and returns a successful response (the caller closes its
// body); an error answer becomes *Error.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	cc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	u := &url.URL{Scheme: "http", Host: "agent", Path: r.path, RawQuery: r.query.Encode()}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), r.body)
	if err != nil {
		return nil, err
	}
	if r.body != nil {
		req.ContentLength = r.length
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("workapi: %s %s: %w", r.method, r.path, err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb ErrorBody
	msg := ""
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		msg = safetext.Line(eb.Error, 1024)
	} else {
		msg = fmt.Sprintf("the agent answered %s %s with status %d", r.method, r.path, resp.StatusCode)
	}
	return nil, &Error{Status: resp.StatusCode, Message: msg}
}

// call sends a JSON request body (nil: none) and decodes a JSON answer
// into out (nil: none expected), reading at most MaxJSONBody bytes.
func (c *Client) call(ctx context.Context, method, path string, query url.Values, in, out any) error {
	r := request{method: method, path: path, query: query}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		r.body, r.length = bytes.NewReader(b), int64(len(b))
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeBounded(resp.Body, out, method+" "+path)
}

func decodeBounded(body io.Reader, out any, what string) error {
	b, err := io.ReadAll(io.LimitReader(body, MaxJSONBody+1))
	if err != nil {
		return fmt.Errorf("workapi: %s: %w", what, err)
	}
	if len(b) > MaxJSONBody {
		return fmt.Errorf("workapi: %s: the agent's answer is over %d bytes", what, MaxJSONBody)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("workapi: %s: bad answer from the agent: %v", what, err)
	}
	return nil
}

func userQuery(user string) url.Values {
	q := url.Values{}
	if user != "" {
		q.Set("user", user)
	}
	return q
}

// StartProcess starts a process (as spec.User).
func (c *Client) StartProcess(ctx context.Context, spec ProcessSpec) (Process, error) {
	var p Process
	err := c.call(ctx, http.MethodPost, "/processes", userQuery(spec.User), spec, &p)
	return p, err
}

// Processes lists the running and recently ended processes.
func (c *Client) Processes(ctx context.Context) ([]Process, error) {
	var l ProcessList
	err := c.call(ctx, http.MethodGet, "/processes", nil, nil, &l)
	return l.Processes, err
}

// Process returns one process.
func (c *Client) Process(ctx context.Context, id string) (Process, error) {
	var p Process
	err := c.call(ctx, http.MethodGet, "/processes/"+url.PathEscape(id), nil, nil, &p)
	return p, err
}

// Signal sends sig (e.g. "TERM") to the process, or its whole group.
func (c *Client) Signal(ctx context.Context, id, sig string, group bool) error {
	return c.call(ctx, http.MethodPost, "/processes/"+url.PathEscape(id)+"/signal", nil, SignalRequest{Signal: sig, Group: group}, nil)
}

// Resize changes a PTY's size.
func (c *Client) Resize(ctx context.Context, id string, size WindowSize) error {
	return c.call(ctx, http.MethodPost, "/processes/"+url.PathEscape(id)+"/resize", nil, size, nil)
}

// Stdin streams r into the process's stdin, closing it after if eof.
func (c *Client) Stdin(ctx context.Context, id string, r io.Reader, eof bool) error {
	q := url.Values{}
	if eof {
		q.Set("eof", "1")
	}
	resp, err := c.do(ctx, request{method: http.MethodPost, path: "/processes/" + url.PathEscape(id) + "/stdin", query: q, body: r, length: -1})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeBounded(resp.Body, nil, "stdin")
}

// Output is a process's output as frames (see the package comment).
type Output struct {
	*FrameReader
	body io.Closer
}

// Close ends the stream.
func (o *Output) Close() error { return o.body.Close() }

// Output opens the process's output from offset; with follow it stays
// open until the process ends (its last frame is FrameExit).
func (c *Client) Output(ctx context.Context, id string, offset int64, follow bool) (*Output, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/processes/" + url.PathEscape(id) + "/output", query: q})
	if err != nil {
		return nil, err
	}
	return &Output{FrameReader: NewFrameReader(resp.Body), body: resp.Body}, nil
}

// File is a file being read: its description and its bytes.
type File struct {
	io.ReadCloser
	Size int64
	Mode string
	UID  int
	GID  int
}

// ReadFile opens path as user, from byte offset (0: the start).
func (c *Client) ReadFile(ctx context.Context, user, path string, offset int64) (*File, error) {
	q := userQuery(user)
	q.Set("path", path)
	h := http.Header{}
	if offset > 0 {
		h.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/files/content", query: q, header: h})
	if err != nil {
		return nil, err
	}
	f := &File{ReadCloser: resp.Body, Size: -1, Mode: resp.Header.Get(HeaderMode)}
	if n, err := strconv.ParseInt(resp.Header.Get(HeaderSize), 10, 64); err == nil && n >= 0 {
		f.Size = n
	}
	f.UID, _ = strconv.Atoi(resp.Header.Get(HeaderUID))
	f.GID, _ = strconv.Atoi(resp.Header.Get(HeaderGID))
	return f, nil
}

// WriteFile streams r into path as user (mode "": the default); length
// is r's size if known, else -1.
func (c *Client) WriteFile(ctx context.Context, user, path, mode string, r io.Reader, length int64) (FileInfo, error) {
	q := userQuery(user)
	q.Set("path", path)
	if mode != "" {
		q.Set("mode", mode)
	}
	var fi FileInfo
	resp, err := c.do(ctx, request{method: http.MethodPut, path: "/files/content", query: q, body: r, length: length})
	if err != nil {
		return fi, err
	}
	defer resp.Body.Close()
	return fi, decodeBounded(resp.Body, &fi, "write file")
}

// Stat describes path as user sees it.
func (c *Client) Stat(ctx context.Context, user, path string) (FileInfo, error) {
	q := userQuery(user)
	q.Set("path", path)
	var fi FileInfo
	return fi, c.call(ctx, http.MethodGet, "/files/stat", q, nil, &fi)
}

// List lists a directory as user.
func (c *Client) List(ctx context.Context, user, path string) (FileList, error) {
	q := userQuery(user)
	q.Set("path", path)
	var l FileList
	return l, c.call(ctx, http.MethodGet, "/files/list", q, nil, &l)
}

// Mkdir makes a directory as user.
func (c *Client) Mkdir(ctx context.Context, user string, req MkdirRequest) (FileInfo, error) {
	var fi FileInfo
	return fi, c.call(ctx, http.MethodPost, "/files/mkdir", userQuery(user), req, &fi)
}

// Rename moves a file as user.
func (c *Client) Rename(ctx context.Context, user string, req RenameRequest) error {
	return c.call(ctx, http.MethodPost, "/files/rename", userQuery(user), req, nil)
}

// Remove removes path as user (a directory's contents too with recursive).
func (c *Client) Remove(ctx context.Context, user, path string, recursive bool) error {
	q := userQuery(user)
	q.Set("path", path)
	if recursive {
		q.Set("recursive", "1")
	}
	return c.call(ctx, http.MethodDelete, "/files", q, nil, nil)
}

// maxWatchLine bounds one watch event line.
const maxWatchLine = 16 << 10

// Watch is a stream of changes in a directory.
type Watch struct {
	body io.ReadCloser
	dec  *json.Decoder
	lim  *io.LimitedReader
}

// Next returns the next change; io.EOF when the stream ended.
func (w *Watch) Next() (WatchEvent, error) {
	w.lim.N = maxWatchLine // each event gets its own allowance
	var ev WatchEvent
	if err := w.dec.Decode(&ev); err != nil {
		if w.lim.N <= 0 {
			return ev, fmt.Errorf("workapi: watch event over %d bytes", maxWatchLine)
		}
		return ev, err
	}
	ev.Path = safetext.Line(ev.Path, 4096)
	return ev, nil
}

// Close ends the stream.
func (w *Watch) Close() error { return w.body.Close() }

// Watch follows changes under path as user.
func (c *Client) Watch(ctx context.Context, user, path string, recursive bool) (*Watch, error) {
	q := userQuery(user)
	q.Set("path", path)
	if recursive {
		q.Set("recursive", "1")
	}
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/files/watch", query: q})
	if err != nil {
		return nil, err
	}
	lim := &io.LimitedReader{R: resp.Body, N: maxWatchLine}
	return &Watch{body: resp.Body, dec: json.NewDecoder(lim), lim: lim}, nil
}
