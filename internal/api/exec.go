package api

import (
	"net/http"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vm"
)

type execRequest struct {
	Argv           []string `json:"argv"`
	Env            []string `json:"env"`
	Dir            string   `json:"dir"`
	TimeoutSeconds int      `json:"timeout_seconds"`
	Stdin          string   `json:"stdin"`
}

type execResponse struct {
	ExitCode        int    `json:"exit_code"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated"`
	StderrTruncated bool   `json:"stderr_truncated"`
	TimedOut        bool   `json:"timed_out"`
	DurationMS      int64  `json:"duration_ms"`
}

const maxExecTimeoutSeconds = int(agentapi.MaxExecTimeout / time.Second)

// execVM runs a command in a ready VM through its agent and answers with
// its exit code and output.
func (s *Server) execVM(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookup(w, r)
	if !ok {
		return
	}
	var req execRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	// Range first: timeout_seconds * time.Second must not overflow.
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > maxExecTimeoutSeconds {
		s.fail(w, r, errdefs.Invalidf("timeout_seconds must be 0 (the default, %d) to %d, got %d",
			int(agentapi.DefaultExecTimeout/time.Second), maxExecTimeoutSeconds, req.TimeoutSeconds))
		return
	}
	// The rest (argv, env, dir, stdin) is checked by the manager with the
	// agent protocol's own validation.
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
	writeJSON(w, http.StatusOK, execResponse{ExitCode: res.ExitCode, Stdout: string(res.Stdout), Stderr: string(res.Stderr),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated, TimedOut: res.TimedOut,
		DurationMS: res.Duration.Milliseconds()})
}
