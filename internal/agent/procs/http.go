package procs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/hearth-project/hearth/internal/workapi"
)

// Register adds the /processes routes of m to mux (see internal/workapi
// for the routes).
func Register(mux *http.ServeMux, m *Manager) {
	mux.HandleFunc("POST /processes", m.handleStart)
	mux.HandleFunc("GET /processes", m.handleList)
	mux.HandleFunc("GET /processes/{id}", m.withProcess(m.handleGet))
	mux.HandleFunc("GET /processes/{id}/output", m.withProcess(m.handleOutput))
	mux.HandleFunc("POST /processes/{id}/stdin", m.withProcess(m.handleStdin))
	mux.HandleFunc("POST /processes/{id}/signal", m.withProcess(m.handleSignal))
	mux.HandleFunc("POST /processes/{id}/resize", m.withProcess(m.handleResize))
}

func conflict(format string, args ...any) error {
	return &statusError{http.StatusConflict, fmt.Sprintf(format, args...)}
}

// writeError answers with err's status (500 for an error of the agent's
// own) and an ErrorBody.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var se *statusError
	if errors.As(err, &se) {
		status = se.status
	}
	writeJSON(w, status, workapi.ErrorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode the answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// readJSON decodes a JSON body of at most MaxJSONBody bytes into v.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, workapi.MaxJSONBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	if dec.More() {
		return badRequest("request body: more than one JSON value")
	}
	return nil
}

// queryUser returns ?user= ("" if not given).
func queryUser(r *http.Request) string { return r.URL.Query().Get("user") }

func (m *Manager) handleStart(w http.ResponseWriter, r *http.Request) {
	var spec workapi.ProcessSpec
	if err := readJSON(r, &spec); err != nil {
		writeError(w, err)
		return
	}
	if q := queryUser(r); q != "" {
		if spec.User != "" && spec.User != q {
			writeError(w, badRequest("user: %q in the body, %q in the query", clip(spec.User), clip(q)))
			return
		}
		spec.User = q
	}
	p, err := m.Start(spec)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, p)
}

// handleList lists every process, or with ?user= that user's.
func (m *Manager) handleList(w http.ResponseWriter, r *http.Request) {
	list := workapi.ProcessList{Processes: []workapi.Process{}}
	u := queryUser(r)
	for _, p := range m.List() {
		if u == "" || p.User == u {
			list.Processes = append(list.Processes, p)
		}
	}
	writeJSON(w, http.StatusOK, list)
}

// withProcess finds the process of {id}: 404 if there is none, 403 if
// ?user= names someone else than the user it runs as.
func (m *Manager) withProcess(h func(http.ResponseWriter, *http.Request, *process)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		p, ok := m.get(id)
		if !ok {
			writeError(w, &statusError{http.StatusNotFound, fmt.Sprintf("no process %q", clip(id))})
			return
		}
		if u := queryUser(r); u != "" && u != p.user {
			writeError(w, &statusError{http.StatusForbidden, fmt.Sprintf("process %s runs as %s, not %s", p.id, p.user, clip(u))})
			return
		}
		h(w, r, p)
	}
}

func (m *Manager) handleGet(w http.ResponseWriter, r *http.Request, p *process) {
	writeJSON(w, http.StatusOK, p.info())
}

// handleOutput sends the process's output frames from ?offset= (the start
// of the history if not given), to the end of the history, or with
// ?follow=1 until the process has ended.
func (m *Manager) handleOutput(w http.ResponseWriter, r *http.Request, p *process) {
	q := r.URL.Query()
	from := int64(-1)
	if s := q.Get("offset"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, badRequest("offset %q: want a byte offset, 0 or more", clip(s)))
			return
		}
		if end := p.info().HistoryEnd(); n > end {
			writeError(w, badRequest("offset %d: past the end of the output (%d)", n, end))
			return
		}
		from = n
	}
	follow, err := boolParam(q.Get("follow"))
	if err != nil {
		writeError(w, badRequest("follow: %v", err))
		return
	}
	rd := p.hist.attach(from, follow)
	defer p.hist.detach(rd)

	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil { // the headers go now: output may be long in coming
		return
	}
	for {
		f, err := p.hist.next(r.Context(), rd)
		if err != nil {
			return // the end of a history not followed, or the client gone
		}
		switch f.Kind {
		case workapi.FrameStdout, workapi.FrameStderr:
			err = workapi.WriteOutput(w, f.Kind, f.Offset, f.Data)
		case workapi.FrameDropped:
			err = workapi.WriteJSONFrame(w, f.Kind, f.Dropped)
		case workapi.FrameExit:
			err = workapi.WriteJSONFrame(w, f.Kind, f.Exit)
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil || f.Kind == workapi.FrameExit {
			return
		}
	}
}

// boolParam parses a flag parameter: "" and "0" are false, "1" true.
func boolParam(s string) (bool, error) {
	switch s {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	}
	return false, fmt.Errorf("%q: want 1 or 0", clip(s))
}

// handleStdin writes the body to the process's stdin; ?eof=1 ends the
// stdin after it.
func (m *Manager) handleStdin(w http.ResponseWriter, r *http.Request, p *process) {
	eof, err := boolParam(r.URL.Query().Get("eof"))
	if err != nil {
		writeError(w, badRequest("eof: %v", err))
		return
	}
	if _, err := p.writeStdin(r.Body, eof, r.Context().Done()); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *Manager) handleSignal(w http.ResponseWriter, r *http.Request, p *process) {
	var req workapi.SignalRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	name, err := parseSignal(req.Signal)
	if err == nil {
		err = p.signal(name, req.Group)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *Manager) handleResize(w http.ResponseWriter, r *http.Request, p *process) {
	var req workapi.ResizeRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, badRequest("%v", err))
		return
	}
	if err := p.resize(req); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
