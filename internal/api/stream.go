package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
)

// GetConsole serves the VM's serial console from ?offset= (a logical
// offset: the log keeps the boot head and the latest output, and a skipped
// stretch reads as one marker line), and with ?follow=1 keeps streaming
// what the guest writes until the VM is gone or the client leaves.
func (s *Server) GetConsole(w http.ResponseWriter, r *http.Request, id string, params v1.GetConsoleParams) {
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	offset, follow := value(params.Offset), value(params.Follow)
	path := vm.ConsolePath(v)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && v.State == store.StateDestroyed {
		s.fail(w, r, errdefs.NotFoundf("vm %s is destroyed; its console is gone", v.ID))
		return
	}
	info, err := consolelog.Stat(path) // a log not written yet is empty so far
	if err != nil {
		// The host cannot read its own file (an I/O error, a log being
		// rotated faster than it can be listed): the server's trouble,
		// and maybe passing.
		s.Log.Error("console log unreadable", "request_id", requestID(r), "vm", v.ID, "err", err)
		s.fail(w, r, errdefs.Unavailablef("the console of vm %s cannot be read right now; retry", v.ID))
		return
	}
	if follow {
		// A follow holds a connection and reads the log and the VM until
		// the VM is gone: it takes one of the caller's stream slots.
		release, _, ok := s.openStream(w, r)
		if !ok {
			return
		}
		defer release()
	}
	offset = min(offset, info.Size)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Console-Offset", strconv.FormatInt(offset, 10))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rd := consolelog.NewReader(path, offset)
	if follow {
		s.followConsole(w, r, v.ID, path, rd)
		return
	}
	w.Header().Set("X-Console-Size", strconv.FormatInt(info.Size, 10))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	// What the log held when the answer started, and no more. Each chunk
	// gets the write timeout afresh: a client that keeps taking the
	// answer gets all of it however long that takes; one that stops is
	// cut within the timeout.
	for rd.Offset() < info.Size || rd.Marking() {
		k := int64(len(buf))
		if !rd.Marking() {
			k = min(k, info.Size-rd.Offset())
		}
		n, err := rd.Read(buf[:k])
		if n > 0 {
			s.armWrite(rc)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// followConsole streams what rd reads of vm id's console log at path, and what
// the guest writes next, until the VM is destroyed, or has stopped or
// failed and all it wrote is out, or the client leaves. The log is polled;
// the VM's record is read again only when one of its events says it
// changed, not on every poll.
func (s *Server) followConsole(w http.ResponseWriter, r *http.Request, id, path string, rd *consolelog.Reader) {
	ctx := r.Context()
	only := store.EventFilter{VMID: id}
	sub := s.VMs.Bus().Subscribe(16, only)
	defer func() { sub.Close() }()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	keyChecked := time.Now()
	var state store.State
	for stale := true; ; {
		for {
			n, err := rd.Read(buf)
			if n > 0 {
				s.armWrite(rc)
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if rc.Flush() != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
		if stale {
			cur, err := s.VMs.Get(ctx, id)
			if err != nil || cur.State == store.StateDestroyed {
				return
			}
			state, stale = cur.State, false
		}
		if state.Terminal() {
			// The guest writes no more: end once what was recorded is out.
			if info, err := consolelog.Stat(path); err != nil || info.Size <= rd.Offset() {
				return
			}
		}
		if time.Since(keyChecked) >= keyCheckEvery {
			if s.keyGone(ctx, r) {
				return // revoked or expired since the follow began
			}
			keyChecked = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case _, ok := <-sub.C:
			stale = true
			if !ok {
				sub = s.VMs.Bus().Subscribe(16, only) // fell behind: read the record again
			}
		}
	}
}

// eventsDropped is the type of the event a stream sends in place of
// events retention forgot before the stream could send them.
const eventsDropped = "events.dropped"

// StreamEvents streams state changes as server-sent events: every user's for an
// admin key, its own user's for a user key (the store query filters, and
// only those events wake the stream). A client resumes with Last-Event-ID
// (or ?since=) and misses nothing the log still holds; if retention forgot
// events after its resume point, an events.dropped event says so first.
func (s *Server) StreamEvents(w http.ResponseWriter, r *http.Request, _ v1.StreamEventsParams) {
	after, ok := s.resumePoint(w, r, -1)
	if !ok {
		return
	}
	var f store.EventFilter
	if id := identity(r); !id.Admin() {
		f.UserID = id.UserID
	}
	s.streamEvents(w, r, eventStream{filter: f, after: after})
}

// resumePoint reads Last-Event-ID or ?since=; def if neither is given.
func (s *Server) resumePoint(w http.ResponseWriter, r *http.Request, def int64) (int64, bool) {
	since := r.Header.Get("Last-Event-ID")
	if q := r.URL.Query().Get("since"); q != "" {
		since = q
	}
	if since == "" {
		return def, true
	}
	n, err := strconv.ParseInt(since, 10, 64)
	if err != nil || n < 0 {
		s.fail(w, r, errdefs.Invalidf("since / Last-Event-ID must be a non-negative event id, got %q", since))
		return 0, false
	}
	return n, true
}

// eventStream says what one stream sends.
type eventStream struct {
	filter store.EventFilter
	// after is the resume point: events with higher ids are sent; -1 for
	// live events only.
	after int64
	// first, if set, is the type of the first event of everything filter
	// matches ("login.created"): a stream from the start (after 0) that
	// finds it has lost nothing to retention.
	first string
	// last reports whether e ends the stream (after it is sent).
	last func(e store.Event) bool
	// over reports whether no more events can come; checked before each
	// catch-up, it ends the stream once that catch-up is sent.
	over func(ctx context.Context) bool
}

// sseStart answers a request with an event stream.
func sseStart(w http.ResponseWriter) *http.ResponseController {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	return rc
}

// sseEvent writes one server-sent event whose data is v as JSON, within
// the write timeout; it reports whether the client took it. An event of
// a stream that cannot be resumed has no id (id < 0).
func (s *Server) sseEvent(w http.ResponseWriter, rc *http.ResponseController, id int64, typ string, v any) bool {
	b, _ := json.Marshal(v)
	s.armWrite(rc)
	var err error
	if id >= 0 {
		_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, typ, b)
	} else {
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b)
	}
	if err != nil {
		return false
	}
	return rc.Flush() == nil
}

// sseKeepalive writes a comment, so a client that went away is noticed
// and proxies keep an idle stream open; it reports whether the client
// took it.
func (s *Server) sseKeepalive(w http.ResponseWriter, rc *http.ResponseController) bool {
	s.armWrite(rc)
	if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// streamEvents writes the stored events after st.after (none if it is
// negative) and then live ones, until the client goes or st says the
// stream is over. At most Server.MaxStreams streams per user (user keys)
// or key (admin keys) are open at once; more are refused with a 429.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request, st eventStream) {
	release, reads, ok := s.openStream(w, r)
	if !ok {
		return
	}
	defer release()
	rc := sseStart(w)
	ctx := r.Context()

	write := func(j v1.Event) bool { return s.sseEvent(w, rc, j.ID, j.Type, j) }
	// send writes e if the stream carries it; it reports whether to go on.
	send := func(e store.Event) bool {
		if !st.filter.Matches(e) {
			return true
		}
		return write(v1.Event{ID: e.ID, At: e.At.UTC(), Type: e.Type, VM: e.VMID, Login: e.LoginID, User: e.UserID,
			FromState: string(e.FromState), ToState: string(e.ToState), Message: e.Message}) && (st.last == nil || !st.last(e))
	}
	// query reads one page and the horizon, taking one of the caller's
	// store-read turns for it (streamSlots).
	query := func(first bool) (evs []store.Event, horizon int64, over, ok bool) {
		select {
		case reads <- struct{}{}:
		case <-ctx.Done():
			return nil, 0, false, false
		}
		defer func() { <-reads }()
		over = first && st.over != nil && st.over(ctx)
		evs, err := s.Store.QueryEvents(ctx, st.filter, st.after, 500)
		if err != nil {
			return nil, 0, false, false
		}
		horizon, err = s.Store.EventHorizon(ctx)
		return evs, horizon, over, err == nil
	}
	// catchUp sends the stored events after st.after, in id order; it
	// reports whether to go on. The horizon is read after each page: one
	// above st.after means retention may have forgotten events the
	// client has not seen, which it is told (with the horizon as the
	// event's id, so a reconnect resumes from there) before the rest.
	catchUp := func() bool {
		overAtStart := false
		for first := true; ; first = false {
			evs, horizon, over, ok := query(first)
			if !ok {
				return false
			}
			if first {
				overAtStart = over
			}
			whole := st.first != "" && st.after == 0 && len(evs) > 0 && evs[0].Type == st.first
			st.first = ""
			if horizon > st.after && !whole {
				if !write(v1.Event{ID: horizon, At: time.Now().UTC(), Type: eventsDropped,
					Message: fmt.Sprintf("events up to id %d were removed by retention before this stream sent them; re-read the current state", horizon)}) {
					return false
				}
				st.after = horizon
				continue
			}
			for _, e := range evs {
				if !send(e) {
					return false
				}
				st.after = e.ID
			}
			if len(evs) < 500 {
				return !overAtStart
			}
		}
	}
	keepalive := time.NewTicker(sseKeepalive)
	defer keepalive.Stop()
	keyCheck := time.NewTicker(keyCheckEvery)
	defer keyCheck.Stop()
	for {
		// Subscribe before replaying so nothing falls between the two.
		sub := s.VMs.Bus().Subscribe(256, st.filter)
		if st.after >= 0 && !catchUp() {
			sub.Close()
			return
		}
		dropped := false
		for !dropped {
			select {
			case <-ctx.Done():
				sub.Close()
				return
			case <-keepalive.C:
				if !s.sseKeepalive(w, rc) {
					sub.Close()
					return
				}
			case <-keyCheck.C:
				if s.keyGone(ctx, r) {
					// Revoked or expired since the stream began: a
					// reconnect is told why (401).
					sub.Close()
					return
				}
			case e, ok := <-sub.C:
				if !ok {
					dropped = true // too slow: resume from the store
					break
				}
				if st.after < 0 {
					// No resume point: live events only, from the first.
					if !send(e) {
						sub.Close()
						return
					}
					st.after = e.ID
					continue
				}
				// Events are published after they are stored, by
				// different goroutines, so one may arrive before an
				// earlier one: the bus only says "something new", and
				// the store, where ids are in commit order, says what.
				if e.ID > st.after && !catchUp() {
					sub.Close()
					return
				}
			}
		}
		// With no resume point yet, a dropped subscriber simply resubscribes.
	}
}
