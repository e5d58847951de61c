package api

import (
	"net/http"
	"time"

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

const maxExecTimeout = 10 * time.Minute

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
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		s.fail(w, r, errdefs.Invalidf("argv must name a command"))
		return
	}
	timeout := 30 * time.Second
	if req.TimeoutSeconds < 0 || time.Duration(req.TimeoutSeconds)*time.Second > maxExecTimeout {
		s.fail(w, r, errdefs.Invalidf("timeout_seconds must be between 1 and %d", int(maxExecTimeout.Seconds())))
		return
	}
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	if len(req.Stdin) > 64<<10 {
		s.fail(w, r, errdefs.Invalidf("stdin is limited to 64 KiB"))
		return
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
