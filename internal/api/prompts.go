package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/prompt"
	"github.com/hearth-project/hearth/internal/workapi"
)

// promptTag marks the processes prompts run, so that cancel stops only
// those.
const promptTag = "prompt:"

// promptHistory is the output history a prompt's CLI gets: its stream is
// read as it comes, so this only covers a reader that falls behind.
const promptHistory = 4 << 20

// RunPrompt runs a prompt through a provider's CLI in a ready VM as the
// workspace user and streams the CLI's output as normalised events
// (package prompt) until it ends. The CLI dies with the stream.
func (s *Server) RunPrompt(w http.ResponseWriter, r *http.Request, id string) {
	var req v1.PromptRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if s.Providers == nil {
		s.fail(w, r, errdefs.Unavailablef("prompts are not available: this daemon has no providers"))
		return
	}
	p, err := s.Providers.Get(req.Provider)
	if err != nil {
		s.fail(w, r, errdefs.Invalidf("provider %q: no such provider (have %s)", req.Provider, strings.Join(s.Providers.Names(), ", ")))
		return
	}
	argv, env, stdin, err := prompt.BuildCommand(p, prompt.Request{Prompt: req.Prompt, Cwd: req.Cwd, Options: req.Options})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	parser, err := prompt.NewParser(p.Prompt.Format, argv[0])
	if err != nil {
		s.fail(w, r, err) // a provider file the registry let through; classed by the parser
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	user := s.workspaceUser()
	// Signed in means the CLI's credential is in the guest, as the user
	// sees it: asked of the guest, not of the store.
	for _, cred := range p.Credentials {
		if _, err := c.Stat(r.Context(), user, cred.Path); err != nil {
			var we *workapi.Error
			if errors.As(err, &we) && we.Status == http.StatusNotFound {
				s.fail(w, r, errdefs.Conflictf("no %s credential in vm %s (%s is missing): sign in first (POST /v1/logins with provider %s)",
					p.DisplayName, id, cred.Path, p.Name))
				return
			}
			s.fail(w, r, s.workError(r, id, "the credential "+cred.Path, err))
			return
		}
	}
	release, _, ok := s.openStream(w, r)
	if !ok {
		return
	}
	defer release()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	proc, err := c.StartProcess(ctx, workapi.ProcessSpec{Argv: argv, Env: env, Cwd: req.Cwd, User: user,
		Stdin: stdin != nil, HistoryBytes: promptHistory, TimeoutSeconds: int(p.Prompt.Timeout.D().Seconds()),
		DieWithClient: true, Tag: promptTag + p.Name})
	if err != nil {
		s.fail(w, r, s.workError(r, id, "the prompt's working directory", err))
		return
	}
	// Following first: the CLI dies with its last follower, so it is
	// followed before anything can make this handler return.
	out, err := c.Output(ctx, proc.ID, 0, true)
	if err != nil {
		_ = c.Signal(context.WithoutCancel(ctx), proc.ID, "KILL", true)
		s.fail(w, r, s.workError(r, id, processWhat(proc.ID), err))
		return
	}
	defer out.Close()
	if stdin != nil {
		// At once: the CLIs give up on an empty stdin after a moment.
		if err := c.Stdin(ctx, proc.ID, bytes.NewReader(stdin), true); err != nil {
			_ = c.Signal(context.WithoutCancel(ctx), proc.ID, "KILL", true)
			s.fail(w, r, s.workError(r, id, processWhat(proc.ID), err))
			return
		}
	}
	w.Header().Set("X-Hearth-Process", proc.ID)
	rc := sseStart(w)
	var stderr tailBuffer
	emit := func(evs []prompt.Event) bool {
		for _, ev := range evs {
			if !s.sseEvent(w, rc, -1, string(ev.Type), ev) {
				return false
			}
		}
		return true
	}
	send := func(f workapi.Frame) bool {
		switch f.Kind {
		case workapi.FrameStdout:
			return emit(parser.Feed(f.Data))
		case workapi.FrameStderr:
			stderr.Write(f.Data)
			return true
		case workapi.FrameDropped:
			// A reader this stream's own pace keeps up with loses
			// nothing; if the guest dropped output all the same, say so.
			return emit([]prompt.Event{{Type: prompt.TypeError, Severity: "warning",
				Message: "the CLI's output lost bytes before hearth could read them; events may be missing"}})
		default: // FrameExit, the last
			code := -1
			if f.Exit.Code != nil {
				code = *f.Exit.Code
			}
			emit(parser.Finish(code, stderr.Bytes()))
			return false
		}
	}
	streamLoop(s, w, r, rc, pull(ctx, out.Next), send)
}

// CancelPrompt stops a prompt's CLI: SIGTERM to its process group. Only
// processes prompts started can be cancelled here.
func (s *Server) CancelPrompt(w http.ResponseWriter, r *http.Request, id, pid string) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	proc, err := c.Process(r.Context(), pid)
	if err != nil {
		s.fail(w, r, s.workError(r, id, "prompt "+pid, err))
		return
	}
	if !strings.HasPrefix(proc.Tag, promptTag) {
		s.fail(w, r, errdefs.NotFoundf("prompt %s in vm %s: no such prompt (process %s is not one)", pid, id, pid))
		return
	}
	if proc.State != workapi.StateRunning {
		s.fail(w, r, errdefs.Conflictf("prompt %s in vm %s has ended already", pid, id))
		return
	}
	if err := c.Signal(r.Context(), pid, "TERM", true); err != nil {
		s.fail(w, r, s.workError(r, id, "prompt "+pid, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// workspaceUser is whom prompts run as: the user logins install
// credentials for.
func (s *Server) workspaceUser() string {
	if s.WorkspaceUser != "" {
		return s.WorkspaceUser
	}
	return workapi.DefaultUser
}

// tailBuffer keeps the last prompt.MaxStderrTail bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) {
	t.b = append(t.b, p...)
	if over := len(t.b) - prompt.MaxStderrTail; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
}

func (t *tailBuffer) Bytes() []byte { return t.b }
