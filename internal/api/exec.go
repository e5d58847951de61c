package api

import (
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/vm"
)

// ExecVM runs a command in a ready VM through its agent and answers with
// its exit code and output.
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
	// overflow); the rest (argv, env, dir, stdin) is checked by the
	// manager with the agent protocol's own validation.
	timeout := agentapi.DefaultExecTimeout
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	res, err := s.VMs.Exec(r.Context(), v.ID, vm.ExecRequest{Argv: req.Argv, Env: req.Env, Dir: req.Dir,
		Timeout: timeout, Stdin: []byte(req.Stdin)})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v1.ExecResult{ExitCode: res.ExitCode, Stdout: string(res.Stdout), Stderr: string(res.Stderr),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated, TimedOut: res.TimedOut,
		DurationMS: res.Duration.Milliseconds()})
}
