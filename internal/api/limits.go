package api

import (
	"io"
	"net/http"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// The HTTP server (internal/httplimit) bounds reading a request (headers
// and body) and writing a response. Handlers here adjust those deadlines
// to what each route needs:
//
//   - Once a request's body is read (or it has none) the read deadline is
//     lifted, so a long handler (exec, wait, a stream) is not cut by it:
//     net/http cancels a request's context when a read passes its deadline.
//   - A response's write deadline starts when the handler starts to answer
//     (a wait or an exec may answer minutes after the request arrived), and
//     streams re-arm it before every write, so a client that stops reading
//     is cut within WriteTimeout however long the stream has run.

// errBodyTimeout is a body that did not arrive within the read timeout.
var errBodyTimeout = errdefs.Timeoutf("the request body did not arrive in time")

// sseKeepalive is how often an idle event stream sends a comment, so a
// client that went away is noticed and proxies keep the stream open.
var sseKeepalive = 15 * time.Second

// bound applies the deadline rules above to every request. A request
// answered before its body was read to the end (refused, say, for a
// missing key) closes its connection after the answer, instead of making
// net/http read the rest of the body first, for as long as the client
// cares to trickle it.
func (s *Server) bound(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &deadlineWriter{ResponseWriter: w, timeout: s.WriteTimeout}
		if r.Body == nil || r.Body == http.NoBody {
			_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
		} else {
			dw.body = &trackedBody{ReadCloser: r.Body}
			r.Body = dw.body
		}
		next.ServeHTTP(dw, r)
	})
}

// trackedBody records whether a request body was read to its end.
type trackedBody struct {
	io.ReadCloser
	eof bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// bodyRead lifts the read deadline of a request whose body has been read
// to its end.
func bodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
}

// armWrite gives the next write on a stream WriteTimeout to complete.
func (s *Server) armWrite(rc *http.ResponseController) {
	if s.WriteTimeout > 0 {
		_ = rc.SetWriteDeadline(time.Now().Add(s.WriteTimeout))
	}
}

// deadlineWriter sets the write deadline when the handler starts to
// answer, and asks for the connection to close if the body is unread.
type deadlineWriter struct {
	http.ResponseWriter
	timeout time.Duration
	body    *trackedBody // nil: the request has none
	armed   bool
}

func (d *deadlineWriter) arm() {
	if d.armed {
		return
	}
	d.armed = true
	if d.body != nil && !d.body.eof {
		d.Header().Set("Connection", "close")
	}
	if d.timeout > 0 {
		_ = http.NewResponseController(d.ResponseWriter).SetWriteDeadline(time.Now().Add(d.timeout))
	}
}

func (d *deadlineWriter) WriteHeader(code int) {
	d.arm()
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Write(b []byte) (int, error) {
	d.arm()
	return d.ResponseWriter.Write(b)
}

// Flush lets streaming handlers flush through.
func (d *deadlineWriter) Flush() {
	d.arm()
	_ = http.NewResponseController(d.ResponseWriter).Flush()
}

// Unwrap exposes the underlying writer to http.ResponseController (and to
// the viewer's hijack).
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }
