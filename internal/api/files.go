package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/workapi"
)

// fileJSON is a file's description as the API answers it.
func fileJSON(fi workapi.FileInfo) v1.FileInfo {
	return v1.FileInfo{Path: fi.Path, Name: fi.Name, Type: v1.FileInfoType(fi.Type), Size: fi.Size, Mode: fi.Mode,
		UID: fi.UID, GID: fi.GID, Owner: fi.Owner, ModTime: fi.ModTime.UTC(), Target: fi.Target}
}

// octalMode reports whether the guest's mode is permission bits in octal,
// as the header must carry them.
func octalMode(m string) bool {
	if len(m) < 3 || len(m) > 4 {
		return false
	}
	for _, c := range m {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}

// fileWhat names path for a 404.
func fileWhat(path string) string { return "file " + path }

// rangeStart reads a resume request, "bytes=N-"; other ranges are
// ignored (the whole file is sent), as RFC 9110 allows.
func rangeStart(h *string) int64 {
	if h == nil {
		return 0
	}
	spec, ok := strings.CutPrefix(strings.TrimSpace(*h), "bytes=")
	if !ok {
		return 0
	}
	first, ok := strings.CutSuffix(spec, "-")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// ReadFile streams a file of the guest to the client, from the start or
// from where a Range asks. Each write gets the write timeout afresh, so a
// download takes as long as it needs while the client keeps taking it.
func (s *Server) ReadFile(w http.ResponseWriter, r *http.Request, id string, params v1.ReadFileParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	offset := rangeStart(params.Range)
	f, err := c.ReadFile(r.Context(), value(params.User), params.Path, offset)
	var we *workapi.Error
	if errors.As(err, &we) && we.Status == http.StatusRequestedRangeNotSatisfiable {
		writeError(w, http.StatusRequestedRangeNotSatisfiable, "invalid_argument", we.Message)
		return
	}
	if err != nil {
		s.fail(w, r, s.workError(r, id, fileWhat(params.Path), err))
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	if octalMode(f.Mode) {
		h.Set(workapi.HeaderMode, f.Mode)
	}
	h.Set(workapi.HeaderUID, strconv.Itoa(f.UID))
	h.Set(workapi.HeaderGID, strconv.Itoa(f.GID))
	length := int64(-1)
	if f.Size >= 0 {
		h.Set(workapi.HeaderSize, strconv.FormatInt(f.Size, 10))
		length = max(f.Size-offset, 0)
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	status := http.StatusOK
	if offset > 0 {
		status = http.StatusPartialContent
		if f.Size >= 0 {
			h.Set("Content-Range", "bytes "+strconv.FormatInt(offset, 10)+"-"+strconv.FormatInt(f.Size-1, 10)+"/"+strconv.FormatInt(f.Size, 10))
		}
	}
	w.WriteHeader(status)
	rc := http.NewResponseController(w)
	var src io.Reader = f
	if length >= 0 {
		// The guest said the size: no more than that goes out (a file
		// that shrank meanwhile cuts the answer short, which the client
		// sees against Content-Length).
		src = io.LimitReader(f, length)
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
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

// WriteFile streams the request body into a file of the guest. The body's
// size is unbounded (the API's JSON limit is not applied) and so is its
// duration, while it keeps coming (streamedBody).
func (s *Server) WriteFile(w http.ResponseWriter, r *http.Request, id string, params v1.WriteFileParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	body := s.streamedBody(w, r)
	length := r.ContentLength
	if length < 0 {
		length = -1
	}
	fi, err := c.WriteFile(r.Context(), value(params.User), params.Path, value(params.Mode), body, length)
	if berr := body.finish(); err != nil && berr != nil {
		err = berr
	}
	if err != nil {
		s.fail(w, r, s.workError(r, id, fileWhat(params.Path), err))
		return
	}
	writeJSON(w, http.StatusOK, fileJSON(fi))
}

// StatFile describes a file of the guest.
func (s *Server) StatFile(w http.ResponseWriter, r *http.Request, id string, params v1.StatFileParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	fi, err := c.Stat(r.Context(), value(params.User), params.Path)
	if err != nil {
		s.fail(w, r, s.workError(r, id, fileWhat(params.Path), err))
		return
	}
	writeJSON(w, http.StatusOK, fileJSON(fi))
}

// ListFiles lists a directory of the guest.
func (s *Server) ListFiles(w http.ResponseWriter, r *http.Request, id string, params v1.ListFilesParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	l, err := c.List(r.Context(), value(params.User), params.Path)
	if err != nil {
		s.fail(w, r, s.workError(r, id, "directory "+params.Path, err))
		return
	}
	out := v1.FileList{Path: l.Path, Truncated: l.Truncated, Entries: make([]v1.FileInfo, 0, len(l.Entries))}
	for _, e := range l.Entries {
		out.Entries = append(out.Entries, fileJSON(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// MakeDirectory makes a directory in the guest.
func (s *Server) MakeDirectory(w http.ResponseWriter, r *http.Request, id string, params v1.MakeDirectoryParams) {
	var req v1.MakeDirectory
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	fi, err := c.Mkdir(r.Context(), value(params.User), workapi.MkdirRequest{Path: req.Path, Mode: req.Mode, Parents: req.Parents})
	if err != nil {
		s.fail(w, r, s.workError(r, id, "the parent of "+req.Path, err))
		return
	}
	writeJSON(w, http.StatusCreated, fileJSON(fi))
}

// RenameFile moves a file in the guest.
func (s *Server) RenameFile(w http.ResponseWriter, r *http.Request, id string, params v1.RenameFileParams) {
	var req v1.RenameFile
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	if err := c.Rename(r.Context(), value(params.User), workapi.RenameRequest{From: req.From, To: req.To}); err != nil {
		s.fail(w, r, s.workError(r, id, fileWhat(req.From), err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// RemoveFile removes a file or directory of the guest.
func (s *Server) RemoveFile(w http.ResponseWriter, r *http.Request, id string, params v1.RemoveFileParams) {
	c, ok := s.work(w, r, id)
	if !ok {
		return
	}
	if err := c.Remove(r.Context(), value(params.User), params.Path, value(params.Recursive)); err != nil {
		s.fail(w, r, s.workError(r, id, fileWhat(params.Path), err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// watchKinds are the kinds of change a watch stream sends, each as an
// event of that name.
var watchKinds = map[string]bool{workapi.WatchCreate: true, workapi.WatchWrite: true, workapi.WatchRemove: true,
	workapi.WatchRename: true, workapi.WatchAttrib: true, workapi.WatchOverflow: true}

// WatchFiles streams the changes in a directory of the guest as
// server-sent events, until the client leaves or the guest ends the
// watch.
func (s *Server) WatchFiles(w http.ResponseWriter, r *http.Request, id string, params v1.WatchFilesParams) {
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
	wt, err := c.Watch(ctx, value(params.User), params.Path, value(params.Recursive))
	if err != nil {
		s.fail(w, r, s.workError(r, id, "directory "+params.Path, err))
		return
	}
	defer wt.Close() // also ends a Next the puller is blocked in
	rc := sseStart(w)
	send := func(e workapi.WatchEvent) bool {
		if !watchKinds[e.Kind] {
			return true // the guest's: names no event this API has
		}
		return s.sseEvent(w, rc, -1, e.Kind, v1.WatchEvent{Kind: v1.WatchEventKind(e.Kind), Path: e.Path, Dir: e.Dir, Time: e.Time.UTC()})
	}
	streamLoop(s, w, r, rc, pull(ctx, wt.Next), send)
}
