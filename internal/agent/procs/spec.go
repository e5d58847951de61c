package procs

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/workapi"
)

const (
	// MinHistoryBytes is the smallest history a process may ask for.
	MinHistoryBytes = 4 << 10
	// maxTag bounds ProcessSpec.Tag.
	maxTag = 64
	// maxTimeoutSeconds bounds ProcessSpec.TimeoutSeconds: a year.
	maxTimeoutSeconds = 365 * 24 * 3600
	// maxUserName bounds a user name (Linux allows 32 bytes).
	maxUserName = 64
)

// checkSpec reports what is wrong with a spec, naming the field.
func checkSpec(s *workapi.ProcessSpec) error {
	switch {
	case len(s.Argv) > 0 && s.Command != "":
		return badRequest("argv and command: give one, not both")
	case len(s.Argv) == 0 && s.Command == "":
		return badRequest("argv or command: give one")
	case len(s.Argv) > 0 && s.Argv[0] == "":
		return badRequest("argv[0]: empty")
	case strings.ContainsRune(s.Command, 0):
		return badRequest("command: contains a NUL byte")
	}
	for i, a := range s.Argv {
		if strings.ContainsRune(a, 0) {
			return badRequest("argv[%d]: contains a NUL byte", i)
		}
	}
	if err := guestuser.CheckEnv(s.Env); err != nil {
		return badRequest("%v", err)
	}
	if s.Cwd != "" && (!filepath.IsAbs(s.Cwd) || strings.ContainsRune(s.Cwd, 0)) {
		return badRequest("cwd %q: not an absolute path", s.Cwd)
	}
	if h := s.HistoryBytes; h != 0 && (h < MinHistoryBytes || h > workapi.MaxHistoryBytes) {
		return badRequest("history_bytes %d: want %d to %d (0 for %d)", h, MinHistoryBytes, workapi.MaxHistoryBytes, workapi.DefaultHistoryBytes)
	}
	if t := s.TimeoutSeconds; t < 0 || t > maxTimeoutSeconds {
		return badRequest("timeout_seconds %d: want 0 (none) to %d", t, maxTimeoutSeconds)
	}
	if len(s.Tag) > maxTag || !utf8.ValidString(s.Tag) || strings.ContainsFunc(s.Tag, unicode.IsControl) {
		return badRequest("tag: at most %d bytes of printable UTF-8", maxTag)
	}
	if len(s.User) > maxUserName {
		return badRequest("user: longer than %d bytes", maxUserName)
	}
	if s.PTY != nil {
		if err := s.PTY.Validate(); err != nil {
			return badRequest("pty: %v", err)
		}
	}
	return nil
}

// signals are the signals a request may name.
var signals = map[string]bool{
	"HUP": true, "INT": true, "QUIT": true, "KILL": true, "TERM": true,
	"USR1": true, "USR2": true, "STOP": true, "CONT": true, "WINCH": true,
}

// parseSignal returns the signal named s: HUP, INT, QUIT, KILL, TERM,
// USR1, USR2, STOP, CONT or WINCH, with or without "SIG", in either case.
func parseSignal(s string) (string, error) {
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if !signals[name] {
		return "", badRequest("signal %q: want one of HUP, INT, QUIT, KILL, TERM, USR1, USR2, STOP, CONT, WINCH", clip(s))
	}
	return name, nil
}

// clip shortens text from a request for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// statusError is an error with the HTTP status it answers with.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &statusError{400, fmt.Sprintf(format, args...)}
}
