package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/workapi"
)

// The routes of a VM's work API (processes.go, files.go, exec.go) call the
// guest agent over the VM's data channel (package workapi) and map what it
// answers to the API's error classes: the agent's 400, 403, 404, 409 and
// 429 are the client's, said in the guest's words; anything else the
// agent does is the guest's trouble (503), never a 500 of the daemon's.

// agentRetryAfter is the wait a 503 for an unreachable guest agent, or a
// 429 for a guest running all the processes it may, asks for.
const agentRetryAfter = 2 * time.Second

// work returns the work API client of VM id, after checking that the
// caller may see it; it has answered the request when ok is false.
func (s *Server) work(w http.ResponseWriter, r *http.Request, id string) (*workapi.Client, bool) {
	v, ok := s.lookup(w, r, id)
	if !ok {
		return nil, false
	}
	c, err := s.VMs.Work(r.Context(), v.ID)
	if err != nil {
		s.fail(w, r, err)
		return nil, false
	}
	return c, true
}

// workError maps an error of a call to VM vmID's agent to the API's
// classes. what names the process or file the call was about, for a 404.
func (s *Server) workError(r *http.Request, vmID, what string, err error) error {
	var we *workapi.Error
	switch {
	case errors.As(err, &we):
		switch s := we.Status; {
		case s == http.StatusBadRequest:
			return errdefs.Invalidf("%s", we.Message)
		case s == http.StatusForbidden:
			return errdefs.Forbiddenf("%s", we.Message)
		case s == http.StatusNotFound:
			return errdefs.NotFoundf("%s in vm %s: %s", what, vmID, we.Message)
		case s == http.StatusConflict:
			return errdefs.Conflictf("%s", we.Message)
		case s == http.StatusTooManyRequests:
			return errdefs.RateLimitedf(agentRetryAfter, "%s", we.Message)
		case s < 500:
			return errdefs.Invalidf("%s", we.Message)
		}
		return errdefs.UnavailableRetryf(agentRetryAfter, "the guest agent of vm %s failed: %s", vmID, we.Message)
	case errors.Is(err, errBodyTimeout):
		return err // the client's own body was late
	case r.Context().Err() != nil:
		// The client left: nobody reads this answer, but its log line
		// must not read as the daemon's fault.
		return errdefs.Unavailablef("the request ended before the guest agent answered")
	}
	s.Log.Warn("guest agent unreachable", "request_id", requestID(r), "vm", vmID, "err", err)
	return errdefs.UnavailableRetryf(agentRetryAfter, "the guest agent of vm %s cannot be reached right now; retry", vmID)
}

// progressBody is a request body of any size that must keep coming: each
// read must return within timeout (0: no bound) of its start, however
// long the whole body takes. It is read by the HTTP/2 transport that
// carries it to the guest, on a goroutine of the transport's, which may
// read on after the guest has answered: finish stops that before the
// handler answers.
type progressBody struct {
	rc       *http.ResponseController
	timeout  time.Duration
	stopping atomic.Bool
	eof      atomic.Bool

	mu  sync.Mutex // held across each read, so finish waits one out
	r   io.Reader
	err error // the first error the client's body gave
}

// errBodyStopped is what reads of a finished body return.
var errBodyStopped = errors.New("request body no longer read")

// streamedBody returns r's body bounded by progress rather than in total:
// the server's read deadline, set for the whole request, is replaced by
// one per read.
func (s *Server) streamedBody(w http.ResponseWriter, r *http.Request) *progressBody {
	rc := http.NewResponseController(w)
	if s.ReadTimeout <= 0 {
		_ = rc.SetReadDeadline(time.Time{})
	}
	return &progressBody{r: r.Body, rc: rc, timeout: s.ReadTimeout}
}

func (b *progressBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.eof.Load():
		return 0, io.EOF
	case b.err != nil:
		return 0, b.err
	case b.stopping.Load():
		return 0, errBodyStopped
	}
	if b.timeout > 0 {
		_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.eof.Store(true)
		_ = b.rc.SetReadDeadline(time.Time{})
	case err != nil && !b.stopping.Load():
		b.err = err
	}
	return n, err
}

// finish stops reading the body (a read in flight is cut short) and
// returns the client's fault in it, if any: a body that did not arrive
// in time is a 408.
func (b *progressBody) finish() error {
	b.stopping.Store(true)
	if !b.eof.Load() {
		// Cut a read in flight short (a later one sees stopping): the
		// rest of the body is left unread, and the connection closes
		// after the answer.
		_ = b.rc.SetReadDeadline(time.Now())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.err == nil:
		return nil
	case errors.Is(b.err, os.ErrDeadlineExceeded):
		return errBodyTimeout
	}
	return errdefs.Invalidf("reading the request body: %v", b.err)
}

// pulled is one item a puller read, or the error that ended it.
type pulled[T any] struct {
	v   T
	err error
}

// puller reads items with next on a goroutine of its own, one at a time:
// it reads the next only once the previous was handed back with more. A
// stream's slow client thus holds up the source (the agent, which bounds
// how long it waits), never host memory, while the stream goes on
// writing keepalives and checking its key.
type puller[T any] struct {
	items chan pulled[T]
	more  chan struct{}
}

// pull starts reading with next until it fails or ctx is done; the
// caller closes the source when it is finished, so a next that blocks
// returns.
func pull[T any](ctx context.Context, next func() (T, error)) *puller[T] {
	p := &puller[T]{items: make(chan pulled[T]), more: make(chan struct{}, 1)}
	go func() {
		for {
			v, err := next()
			select {
			case p.items <- pulled[T]{v, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
			select {
			case <-p.more:
			case <-ctx.Done():
				return
			}
		}
	}()
	return p
}

// streamLoop runs a server-sent event stream whose items come from p:
// send writes one (and reports whether to go on); between items the
// stream carries keepalives and ends once the caller's key is revoked or
// expires, or the client leaves.
func streamLoop[T any](s *Server, w http.ResponseWriter, r *http.Request, rc *http.ResponseController, p *puller[T], send func(T) bool) {
	ctx := r.Context()
	keepalive := time.NewTicker(sseKeepalive)
	defer keepalive.Stop()
	keyCheck := time.NewTicker(keyCheckEvery)
	defer keyCheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-p.items:
			if it.err != nil || !send(it.v) {
				return
			}
			p.more <- struct{}{}
		case <-keepalive.C:
			if !s.sseKeepalive(w, rc) {
				return
			}
		case <-keyCheck.C:
			if s.keyGone(ctx, r) {
				return // revoked or expired since the stream began
			}
		}
	}
}
