// Package workfs serves the file routes of the guest agent's work API
// (GET/PUT /files/content, /files/stat, /files/list, /files/mkdir,
// /files/rename, DELETE /files, /files/watch; see internal/workapi) on the
// data channel's mux. Every operation acts as the user the request names:
// the guest kernel, not the agent, decides what that user may read, write,
// list and watch, and files the user writes are owned by the user.
//
// # Thread discipline
//
// The agent runs as root. Changing the process's credentials (setuid,
// syscall.Setuid) would change every thread, so each path operation (open,
// mkdir, rename, unlink, readdir, stat, inotify_add_watch) instead runs on
// an OS thread of its own whose filesystem credentials are the user's
// (Cred.run):
//
//  1. a new goroutine locks itself to its OS thread (runtime.LockOSThread);
//  2. it sets that thread's supplementary groups, filesystem gid and
//     filesystem uid with raw per-thread system calls (SYS_SETGROUPS,
//     SYS_SETFSGID, SYS_SETFSUID through unix.RawSyscall: the C library's
//     and the syscall package's wrappers apply them to every thread), and
//     checks each took effect (getgroups; setfsuid and setfsgid return
//     the previous value, so a second call reads the current one). A
//     filesystem uid other than 0 also clears the thread's filesystem
//     capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, ...), so root's
//     override is gone too;
//  3. it does the operation;
//  4. it returns without runtime.UnlockOSThread, so the runtime ends the
//     thread rather than hand it, still carrying the user's credentials,
//     to another goroutine.
//
// The kernel checks permissions when a file is opened, so once open a
// file's descriptor is read or written from the request's goroutine (the
// bytes of an upload or download never pass through a user thread). The
// same holds for an inotify descriptor, which the watch stream reads from
// its own goroutine; only inotify_add_watch, which checks the user's read
// permission on the path, runs on a user thread.
package workfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/hearth-project/hearth/internal/workapi"
)

// Cred is a guest user the file routes act as.
type Cred struct {
	Name     string
	UID, GID uint32
	// Groups are the user's supplementary groups (the primary group need
	// not be among them).
	Groups []uint32
	// Home is the user's home directory: relative paths and "~/" are
	// taken from it, and it cannot be removed through the routes.
	Home string
}

// UserLookup finds the user a request names (?user=). Its error, whose
// text is answered as is with status 400, says the user does not exist,
// e.g. `no user "x" in this guest`.
type UserLookup func(name string) (Cred, error)

// Options bound the routes. The zero value takes the defaults.
type Options struct {
	// WatchStreams bounds the /files/watch streams open at once
	// (DefaultWatchStreams if 0); one more is answered 429.
	WatchStreams int
	// WatchDirs bounds the directories one watch stream watches
	// (DefaultWatchDirs if 0); past it the stream sends a
	// workapi.WatchError event and watches no more of the tree.
	WatchDirs int
}

// Defaults of Options.
const (
	DefaultWatchStreams = 16
	DefaultWatchDirs    = 1024
)

// Register mounts the file routes on mux.
func Register(mux *http.ServeMux, users UserLookup, opts Options) {
	if opts.WatchStreams <= 0 {
		opts.WatchStreams = DefaultWatchStreams
	}
	if opts.WatchDirs <= 0 {
		opts.WatchDirs = DefaultWatchDirs
	}
	s := &server{users: users, opts: opts, watchSlots: make(chan struct{}, opts.WatchStreams)}
	s.routes(mux)
}

type server struct {
	users      UserLookup
	opts       Options
	watchSlots chan struct{}
}

// handler is a route's work as the request's user. It returns an error
// only before it has written anything.
type handler func(w http.ResponseWriter, r *http.Request, c Cred) error

// handle looks the request's user up, runs h and answers its error.
func (s *server) handle(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("user")
		if name == "" {
			name = workapi.DefaultUser
		}
		c, err := s.users(name)
		if err == nil {
			err = h(w, r, c)
		} else {
			err = fail(http.StatusBadRequest, "%v", err)
		}
		if err != nil {
			writeError(w, err)
		}
	}
}

// statusError is an error with the status it is answered with.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func fail(status int, format string, args ...any) error {
	return &statusError{status: status, msg: fmt.Sprintf(format, args...)}
}

// pathError is the answer to a failed operation op on path: the status
// says whose fault it was (errnoStatus), the message names the path.
func pathError(op, path string, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fail(http.StatusInternalServerError, "%s %s: %v", op, path, err)
	}
	return fail(errnoStatus(errno), "%s %s: %s", op, path, errno.Error())
}

// errnoStatus maps an operation's errno to a status: the user's mistakes
// and the guest's state are 4xx; only what the agent itself ran out of
// is 500.
func errnoStatus(errno syscall.Errno) int {
	switch errno {
	case syscall.EACCES, syscall.EPERM, syscall.EROFS:
		return http.StatusForbidden
	case syscall.ENOENT:
		return http.StatusNotFound
	case syscall.EEXIST, syscall.ENOTEMPTY, syscall.EBUSY, syscall.ETXTBSY, syscall.EXDEV,
		syscall.ENOSPC, syscall.EDQUOT, syscall.EMLINK:
		return http.StatusConflict
	case syscall.EISDIR, syscall.ENOTDIR, syscall.ENAMETOOLONG, syscall.EINVAL, syscall.ELOOP,
		syscall.EFBIG:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	if se, ok := errors.AsType[*statusError](err); ok {
		status = se.status
	}
	writeJSON(w, status, workapi.ErrorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(workapi.ErrorBody{Error: "encode the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// readJSON decodes a request body of at most workapi.MaxJSONBody bytes.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, workapi.MaxJSONBody))
	if err := dec.Decode(v); err != nil {
		return fail(http.StatusBadRequest, "request body: %v", err)
	}
	return nil
}

// resolve makes a request's path absolute: "~" and "~/..." are taken
// from the user's home, as is a relative path (an empty one is the home
// itself). Only NUL bytes are refused; every other question about the
// path is the kernel's to answer, as the user.
func (c Cred) resolve(p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", fail(http.StatusBadRequest, "path %q contains a NUL byte", p)
	}
	switch {
	case filepath.IsAbs(p):
		return filepath.Clean(p), nil
	case c.Home == "":
		return "", fail(http.StatusBadRequest, "path %q is relative and user %s has no home directory", p, c.Name)
	case p == "~":
		return filepath.Clean(c.Home), nil
	case strings.HasPrefix(p, "~/"):
		return filepath.Join(c.Home, p[2:]), nil
	}
	return filepath.Join(c.Home, p), nil
}

// pathParam is the request's ?name= resolved; an empty one is refused.
func (c Cred) pathParam(r *http.Request, name string) (string, error) {
	p := r.URL.Query().Get(name)
	if p == "" {
		return "", fail(http.StatusBadRequest, "%s is required", name)
	}
	return c.resolve(p)
}

// boolParam reads a flag such as ?recursive=1.
func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fail(http.StatusBadRequest, "%s=%q: want 1 or 0", name, v)
	}
	return b, nil
}

// parseMode reads an octal permission mode such as "0644" or "755";
// empty is def.
func parseMode(s string, def uint32) (uint32, error) {
	if s == "" {
		return def, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fail(http.StatusBadRequest, "mode %q: want octal permission bits, at most 07777", s)
	}
	return uint32(m), nil
}

func formatMode(m uint32) string { return fmt.Sprintf("%04o", m&0o7777) }
