package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/workapi"
)

const (
	// execGrace is how long past its timeout an exec waits for the
	// guest to say how the command ended before giving up (503).
	execGrace = 15 * time.Second
	// execKillTimeout bounds killing the command of an exec whose client
	// went away.
	execKillTimeout = 5 * time.Second
	// rootUser is the guest's superuser, whom the control channel's exec
	// runs as.
	rootUser = "root"
	// reasonTimeout is the workapi.Exit.Reason of a process killed at
	// its timeout.
	reasonTimeout = "timeout"
)

// ExecVM runs a command in a ready VM and answers with its exit code and
// output once it has ended.
func (s *Server) ExecVM(w http.ResponseWriter, r *http.Request, id string) {
	v, ok := s.lookup(w, r, id)
	if !ok {
		return
	}
	var req v1.ExecRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	// The document bounds timeout_seconds (so the duration cannot
	// overflow); the rest (argv, env, dir, stdin) is checked with the
	// agent protocol's own validation, the same whichever way it runs.
	timeout := agentapi.DefaultExecTimeout
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	ereq := vm.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Dir, Timeout: timeout, Stdin: []byte(req.Stdin)}
	if err := ereq.Validate(); err != nil {
		s.fail(w, r, err)
		return
	}
	var res vm.ExecResult
	c, err := s.VMs.Work(r.Context(), v.ID)
	switch {
	case err == nil:
		res, err = s.execProcess(r, c, v.ID, req.User, ereq)
	case errors.Is(err, vm.ErrNoDataChannel):
		// A VM started by an older hearth has no data channel: its
		// agent still runs commands over the control channel, as root,
		// so exec keeps working there as it always did. Only that path
		// remains for such VMs; everything else runs as a process.
		if req.User != "" && req.User != rootUser {
			err = errdefs.Conflictf("vm %s was started by an older hearth and runs commands as root only; restart it to run them as %s", v.ID, req.User)
			break
		}
		res, err = s.VMs.Exec(r.Context(), v.ID, ereq)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v1.ExecResult{ExitCode: res.ExitCode, Stdout: string(res.Stdout), Stderr: string(res.Stderr),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated, TimedOut: res.TimedOut,
		DurationMS: res.Duration.Milliseconds()})
}

// execProcess runs req as a process of user and gathers its output,
// each stream capped at agentapi.MaxExecOutput (the rest is read and
// discarded: the command is not held up for it). The process dies with
// the request: it is started with die_with_client and followed for as
// long as the request lasts, and killed outright if the request ends
// first.
func (s *Server) execProcess(r *http.Request, c *workapi.Client, vmID, user string, req vm.ExecRequest) (vm.ExecResult, error) {
	ctx, cancel := context.WithTimeout(r.Context(), req.Timeout+execGrace)
	defer cancel()
	spec := workapi.ProcessSpec{Argv: req.Argv, Env: req.Env, Cwd: req.Dir, User: user, Stdin: len(req.Stdin) > 0,
		TimeoutSeconds: int((req.Timeout + time.Second - 1) / time.Second), DieWithClient: true, Tag: "exec"}
	p, err := c.StartProcess(ctx, spec)
	if err != nil {
		return vm.ExecResult{}, s.workError(r, vmID, "the command's user or directory", err)
	}
	ended := false
	defer func() {
		if !ended {
			// The client left, or the guest did not answer in time:
			// nobody wants the command any more.
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), execKillTimeout)
			defer kcancel()
			_ = c.Signal(kctx, p.ID, "KILL", true)
		}
	}()
	out, err := c.Output(ctx, p.ID, 0, true)
	if err != nil {
		return vm.ExecResult{}, s.execLost(r, vmID, err)
	}
	defer out.Close()
	if len(req.Stdin) > 0 {
		go func() {
			// A command that ends without reading its stdin fails this
			// write; its result says what happened.
			_ = c.Stdin(ctx, p.ID, bytes.NewReader(req.Stdin), true)
		}()
	}
	var res vm.ExecResult
	add := func(buf *[]byte, truncated *bool, data []byte) {
		room := agentapi.MaxExecOutput - len(*buf)
		if len(data) > room {
			data, *truncated = data[:max(room, 0)], true
		}
		*buf = append(*buf, data...)
	}
	for {
		f, err := out.Next()
		if err != nil {
			return vm.ExecResult{}, s.execLost(r, vmID, err)
		}
		switch f.Kind {
		case workapi.FrameStdout:
			add(&res.Stdout, &res.StdoutTruncated, f.Data)
		case workapi.FrameStderr:
			add(&res.Stderr, &res.StderrTruncated, f.Data)
		case workapi.FrameDropped:
			// Which stream lost the bytes the frame does not say.
			res.StdoutTruncated, res.StderrTruncated = true, true
		case workapi.FrameExit:
			ended = true
			e := f.Exit
			res.Duration = time.Duration(e.DurationMS) * time.Millisecond
			switch {
			case e.Reason == reasonTimeout:
				res.TimedOut, res.ExitCode = true, -1
			case e.Code != nil:
				res.ExitCode = *e.Code
			default: // killed by a signal, as the control channel's exec says it
				res.ExitCode = -1
			}
			return res, nil
		}
	}
}

// execLost is the error of an exec whose command's end the guest did not
// report.
func (s *Server) execLost(r *http.Request, vmID string, err error) error {
	var we *workapi.Error
	if errors.As(err, &we) || r.Context().Err() != nil {
		return s.workError(r, vmID, "the command", err)
	}
	s.Log.Warn("exec output lost", "request_id", requestID(r), "vm", vmID, "err", err)
	return errdefs.Unavailablef("the guest agent of vm %s did not report the command's end (within its timeout and a grace); whether it ran is unknown", vmID)
}
