package api

import (
	"context"
	"net/http"
	"strconv"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/workapi"
)

// processJSON is a process as the API answers it.
func processJSON(p workapi.Process) v1.Process {
	out := v1.Process{ID: p.ID, Pid: p.PID, Argv: p.Argv, User: p.User, Cwd: p.Cwd, Tag: p.Tag,
		State: v1.ProcessState(p.State), StartedAt: p.StartedAt.UTC(), StdoutBytes: p.StdoutBytes, StderrBytes: p.StderrBytes,
		HistoryStart: p.HistoryStart, DroppedBytes: p.DroppedBytes, Followers: p.Followers}
	if out.Argv == nil {
		out.Argv = []string{}
	}
	if p.PTY != nil {
		out.Pty = v1.WindowSize{Cols: p.PTY.Cols, Rows: p.PTY.Rows}
	}
	if p.Exit != nil {
		out.Exit = exitJSON(*p.Exit)
	}
	return out
}

func exitJSON(e workapi.Exit) v1.ProcessExit {
	return v1.ProcessExit{Code: e.Code, Signal: e.Signal, EndedAt: e.EndedAt.UTC(), DurationMS: e.DurationMS, Reason: e.Reason}
}

// processWhat names process pid for a 404.
func processWhat(pid string) string { return "process " + pid }

// StartProcess starts a process in a ready VM.
func (s *Server) StartProcess(w http.ResponseWriter, r *http.Request, id string) {
	var req v1.ProcessStart
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	// The document bounds each field; that argv and command exclude
	// each other it cannot say. The rest (NULs, the user, the working
	// directory) is the agent's to check.
	if (len(req.Argv) > 0) == (req.Command != "") {
		s.fail(w, r, errdefs.Invalidf("give argv or command, not both"))
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	spec := workapi.ProcessSpec{Argv: req.Argv, Command: req.Command, Env: req.Env, Cwd: req.Cwd, User: req.User,
		Stdin: req.Stdin, HistoryBytes: req.HistoryBytes, TimeoutSeconds: req.TimeoutSeconds,
		DieWithClient: req.DieWithClient, Tag: req.Tag}
	if req.Pty != (v1.WindowSize{}) {
		spec.PTY = &workapi.WindowSize{Cols: req.Pty.Cols, Rows: req.Pty.Rows}
	}
	p, err := c.StartProcess(r.Context(), spec)
	if err != nil {
		s.fail(w, r, s.workError(r, id, "the process's user or working directory", err))
		return
	}
	writeJSON(w, http.StatusCreated, processJSON(p))
}

// ListProcesses lists a VM's running and recently ended processes.
func (s *Server) ListProcesses(w http.ResponseWriter, r *http.Request, id string) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	ps, err := c.Processes(r.Context())
	if err != nil {
		s.fail(w, r, s.workError(r, id, "processes", err))
		return
	}
	out := v1.ProcessList{Processes: make([]v1.Process, 0, len(ps))}
	for _, p := range ps {
		out.Processes = append(out.Processes, processJSON(p))
	}
	writeJSON(w, http.StatusOK, out)
}

// GetProcess answers one process.
func (s *Server) GetProcess(w http.ResponseWriter, r *http.Request, id, pid string) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	p, err := c.Process(r.Context(), pid)
	if err != nil {
		s.fail(w, r, s.workError(r, id, processWhat(pid), err))
		return
	}
	writeJSON(w, http.StatusOK, processJSON(p))
}

// SignalProcess sends a signal to a process or its group.
func (s *Server) SignalProcess(w http.ResponseWriter, r *http.Request, id, pid string) {
	var req v1.ProcessSignal
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	if err := c.Signal(r.Context(), pid, string(req.Signal), req.Group); err != nil {
		s.fail(w, r, s.workError(r, id, processWhat(pid), err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ResizeProcess changes the terminal size of a process on a PTY.
func (s *Server) ResizeProcess(w http.ResponseWriter, r *http.Request, id, pid string) {
	var req v1.WindowSize
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	if err := c.Resize(r.Context(), pid, workapi.WindowSize{Cols: req.Cols, Rows: req.Rows}); err != nil {
		s.fail(w, r, s.workError(r, id, processWhat(pid), err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ProcessStdin streams the request body into a process's stdin, as it
// arrives: the body's size is unbounded, its pace is not (streamedBody).
func (s *Server) ProcessStdin(w http.ResponseWriter, r *http.Request, id, pid string, params v1.ProcessStdinParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	body := s.streamedBody(w, r)
	err := c.Stdin(r.Context(), pid, body, value(params.EOF))
	if berr := body.finish(); err != nil && berr != nil {
		err = berr
	}
	if err != nil {
		s.fail(w, r, s.workError(r, id, processWhat(pid), err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Output events (see the document).
const (
	outputStdout  = "stdout"
	outputStderr  = "stderr"
	outputDropped = "dropped"
	outputExit    = "exit"
)

// ProcessOutput streams a process's output as server-sent events from an
// offset until it ends. Each event's id is the output offset just past
// it, so a client resumes with Last-Event-ID where it left off.
func (s *Server) ProcessOutput(w http.ResponseWriter, r *http.Request, id, pid string, params v1.ProcessOutputParams) {
	offset := value(params.Offset)
	if params.Offset == nil && params.LastEventID != nil {
		n, err := strconv.ParseInt(*params.LastEventID, 10, 64)
		if err != nil || n < 0 {
			s.fail(w, r, errdefs.Invalidf("Last-Event-ID must be an output offset (a non-negative integer), got %q", *params.LastEventID))
			return
		}
		offset = n
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	release, _, ok := s.openStream(w, r)
	if !ok {
		return
	}
	defer release()
	out, err := c.Output(ctx, pid, offset, true)
	if err != nil {
		s.fail(w, r, s.workError(r, id, processWhat(pid), err))
		return
	}
	defer out.Close() // also ends a Next the puller is blocked in
	rc := sseStart(w)
	pos := offset
	send := func(f workapi.Frame) bool {
		switch f.Kind {
		case workapi.FrameStdout, workapi.FrameStderr:
			typ := outputStdout
			if f.Kind == workapi.FrameStderr {
				typ = outputStderr
			}
			pos = f.Offset + int64(len(f.Data))
			return s.sseEvent(w, rc, pos, typ, v1.ProcessOutput{Offset: f.Offset, Data: f.Data})
		case workapi.FrameDropped:
			pos = f.Dropped.To
			return s.sseEvent(w, rc, pos, outputDropped, v1.ProcessOutputDropped{From: f.Dropped.From, To: f.Dropped.To})
		default: // FrameExit, the last
			s.sseEvent(w, rc, pos, outputExit, exitJSON(*f.Exit))
			return false
		}
	}
	streamLoop(s, w, r, rc, pull(ctx, out.Next), send)
}
