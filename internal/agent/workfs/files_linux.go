package workfs

import (
	"container/heap"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/workapi"
)

func (s *server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /files/content", s.handle(getContent))
	mux.HandleFunc("PUT /files/content", s.handle(putContent))
	mux.HandleFunc("GET /files/stat", s.handle(stat))
	mux.HandleFunc("GET /files/list", s.handle(list))
	mux.HandleFunc("POST /files/mkdir", s.handle(mkdir))
	mux.HandleFunc("POST /files/rename", s.handle(rename))
	mux.HandleFunc("DELETE /files", s.handle(remove))
	mux.HandleFunc("GET /files/watch", s.handle(s.watch))
}

// getContent streams a regular file, from the offset a `Range: bytes=N-`
// (or bytes=N-M) asks for.
func getContent(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.pathParam(r, "path")
	if err != nil {
		return err
	}
	var f *os.File
	var st unix.Stat_t
	err = c.run(func() error {
		// O_NONBLOCK: opening a FIFO must not wait for a writer; it is
		// refused below like every other file that is not a regular one.
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err != nil {
			return pathError("open", path, err)
		}
		if err := unix.Fstat(fd, &st); err != nil {
			_ = unix.Close(fd)
			return pathError("stat", path, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFDIR:
			_ = unix.Close(fd)
			return fail(http.StatusBadRequest, "read %s: is a directory", path)
		default:
			_ = unix.Close(fd)
			return fail(http.StatusBadRequest, "read %s: not a regular file", path)
		}
		if err := unix.SetNonblock(fd, false); err != nil {
			_ = unix.Close(fd)
			return pathError("open", path, err)
		}
		f = os.NewFile(uintptr(fd), path)
		return nil
	})
	if err != nil {
		return err
	}
	defer f.Close()

	size := st.Size
	start, end, partial, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	h.Set(workapi.HeaderMode, formatMode(st.Mode))
	h.Set(workapi.HeaderSize, strconv.FormatInt(size, 10))
	h.Set(workapi.HeaderUID, strconv.FormatUint(uint64(st.Uid), 10))
	h.Set(workapi.HeaderGID, strconv.FormatUint(uint64(st.Gid), 10))
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead || start == end {
		return nil
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		panic(http.ErrAbortHandler)
	}
	if _, err := io.CopyN(w, f, end-start); err != nil {
		// The length is promised: a file cut short, or a client gone,
		// ends the stream as an error rather than as a short file.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// parseRange reads a single `bytes=N-` or `bytes=N-M` range of a file of
// size bytes, as [start, end). Any other form is ignored (the whole file
// is sent), as HTTP allows; a range past the end is 416.
func parseRange(h string, size int64) (start, end int64, partial bool, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, size, false, nil
	}
	start, perr := strconv.ParseInt(first, 10, 64)
	if perr != nil || start < 0 {
		return 0, size, false, nil
	}
	end = size
	if last != "" {
		l, perr := strconv.ParseInt(last, 10, 64)
		if perr != nil || l < start {
			return 0, size, false, nil
		}
		end = min(l, size-1) + 1
	}
	if start == 0 && size == 0 {
		return 0, 0, false, nil
	}
	if start >= size {
		return 0, 0, false, fail(http.StatusRequestedRangeNotSatisfiable, "range %q: the file has %d bytes", h, size)
	}
	return start, end, true, nil
}

// putContent streams the body into a temporary file beside path, flushes
// it and renames it into place, all as the user: the file ends owned by
// the user, with ?mode= (default 0644, or the replaced file's mode).
func putContent(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.pathParam(r, "path")
	if err != nil {
		return err
	}
	mode, err := parseMode(r.URL.Query().Get("mode"), 0o644)
	if err != nil {
		return err
	}
	keepMode := r.URL.Query().Get("mode") == ""
	dir := filepath.Dir(path)
	if dir == path {
		return fail(http.StatusBadRequest, "write %s: is a directory", path)
	}
	var f *os.File
	err = c.run(func() error {
		var st unix.Stat_t
		switch err := unix.Stat(path, &st); {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
			return fail(http.StatusBadRequest, "write %s: is a directory", path)
		case err == nil && keepMode:
			mode = st.Mode & 0o7777
		case err != nil && err != unix.ENOENT:
			return pathError("write", path, err)
		}
		for {
			tmp := filepath.Join(dir, "."+filepath.Base(path)+".hearth-"+randomSuffix())
			fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
			switch {
			case err == unix.EEXIST:
				continue
			case err == unix.ENOENT:
				return fail(http.StatusNotFound, "write %s: directory %s does not exist", path, dir)
			case err != nil:
				return pathError("write", path, err)
			}
			// Exactly mode, whatever the agent's umask.
			if err := unix.Fchmod(fd, mode); err != nil {
				_ = unix.Close(fd)
				_ = unix.Unlink(tmp)
				return pathError("chmod", path, err)
			}
			f = os.NewFile(uintptr(fd), tmp)
			return nil
		}
	})
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := writeBody(f, r.Body, path); err != nil {
		_ = c.run(func() error { return unix.Unlink(tmp) })
		return err
	}
	var fi workapi.FileInfo
	err = c.run(func() error {
		if err := unix.Rename(tmp, path); err != nil {
			_ = unix.Unlink(tmp)
			return pathError("rename into", path, err)
		}
		// The rename itself is made durable too; a directory that cannot
		// be opened or flushed changes nothing the caller could act on.
		if d, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			_ = unix.Fsync(d)
			_ = unix.Close(d)
		}
		var err error
		fi, err = lstatInfo(path)
		return err
	})
	if err != nil {
		return err
	}
	owners{}.fill(&fi)
	writeJSON(w, http.StatusOK, fi)
	return nil
}

// writeBody copies body into f, flushes and closes f: a failure to read
// the body is the client's (400), a failure to write is the file's.
func writeBody(f *os.File, body io.Reader, path string) error {
	br := &bodyReader{r: body}
	_, err := io.Copy(f, br)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case br.err != nil:
		return fail(http.StatusBadRequest, "write %s: read the request body: %v", path, br.err)
	case err != nil:
		return pathError("write", path, err)
	}
	return nil
}

// bodyReader remembers the request body's own read error (io.EOF aside).
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stat answers a path's FileInfo; a symlink is described, not followed.
func stat(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.resolve(r.URL.Query().Get("path"))
	if err != nil {
		return err
	}
	var fi workapi.FileInfo
	if err := c.run(func() (err error) { fi, err = lstatInfo(path); return err }); err != nil {
		return err
	}
	owners{}.fill(&fi)
	writeJSON(w, http.StatusOK, fi)
	return nil
}

// list answers a directory's entries sorted by name: the first
// workapi.MaxListEntries, kept in a bounded heap however large the
// directory is, and fewer if their JSON would pass workapi.MaxJSONBody.
func list(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.resolve(r.URL.Query().Get("path"))
	if err != nil {
		return err
	}
	out := workapi.FileList{Path: path, Entries: []workapi.FileInfo{}}
	err = c.run(func() error {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return pathError("list", path, err)
		}
		d := os.NewFile(uintptr(fd), path)
		defer d.Close()
		var names nameHeap
		for {
			batch, err := d.Readdirnames(1024)
			for _, n := range batch {
				heap.Push(&names, n)
				if names.Len() > workapi.MaxListEntries {
					heap.Pop(&names)
					out.Truncated = true
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return pathError("list", path, err)
			}
		}
		slices.Sort(names)
		for _, name := range names {
			fi, err := statAt(fd, path, name)
			if errors.Is(err, unix.ENOENT) {
				continue // removed since it was listed
			}
			if err != nil {
				// Listed but not searchable (read without execute
				// permission): the name is all there is to say.
				fi = workapi.FileInfo{Path: filepath.Join(path, name), Name: name, Type: "other"}
			}
			out.Entries = append(out.Entries, fi)
		}
		return nil
	})
	if err != nil {
		return err
	}
	own := owners{}
	for i := range out.Entries {
		own.fill(&out.Entries[i])
	}
	b, err := json.Marshal(out)
	for err == nil && len(b) >= workapi.MaxJSONBody {
		out.Entries, out.Truncated = out.Entries[:len(out.Entries)/2], true
		b, err = json.Marshal(out)
	}
	if err != nil {
		return fail(http.StatusInternalServerError, "list %s: %v", path, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	_, _ = w.Write(append(b, '\n'))
	return nil
}

// nameHeap is a max-heap of names: popping drops the greatest, so it keeps
// the smallest ones.
type nameHeap []string

func (h nameHeap) Len() int           { return len(h) }
func (h nameHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h nameHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nameHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *nameHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mkdir makes a directory with exactly the mode asked (default 0755),
// and its missing parents with Parents: 201, or 200 if Parents found it
// there already.
func mkdir(w http.ResponseWriter, r *http.Request, c Cred) error {
	var req workapi.MkdirRequest
	if err := readJSON(w, r, &req); err != nil {
		return err
	}
	if req.Path == "" {
		return fail(http.StatusBadRequest, "path is required")
	}
	path, err := c.resolve(req.Path)
	if err != nil {
		return err
	}
	mode, err := parseMode(req.Mode, 0o755)
	if err != nil {
		return err
	}
	var fi workapi.FileInfo
	created := false
	err = c.run(func() error {
		var err error
		if req.Parents {
			created, err = mkdirAll(path, mode)
		} else {
			err = mkdirOne(path, mode)
			created = true
		}
		if err != nil {
			return err
		}
		fi, err = lstatInfo(path)
		return err
	})
	if err != nil {
		return err
	}
	owners{}.fill(&fi)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, fi)
	return nil
}

func mkdirOne(path string, mode uint32) error {
	switch err := unix.Mkdir(path, mode); err {
	case nil:
	case unix.ENOENT:
		return fail(http.StatusNotFound, "mkdir %s: directory %s does not exist", path, filepath.Dir(path))
	default:
		return pathError("mkdir", path, err)
	}
	// Exactly mode, whatever the agent's umask.
	if err := unix.Chmod(path, mode); err != nil {
		return pathError("chmod", path, err)
	}
	return nil
}

// mkdirAll makes path with mode and its missing parents with 0755; it
// says whether it made path.
func mkdirAll(path string, mode uint32) (bool, error) {
	var st unix.Stat_t
	switch err := unix.Stat(path, &st); {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return false, nil
	case err == nil:
		return false, fail(http.StatusConflict, "mkdir %s: exists and is not a directory", path)
	case err != unix.ENOENT:
		return false, pathError("mkdir", path, err)
	}
	if parent := filepath.Dir(path); parent != path {
		if _, err := mkdirAll(parent, 0o755); err != nil {
			return false, err
		}
	}
	err := mkdirOne(path, mode)
	if se, ok := errors.AsType[*statusError](err); ok && se.status == http.StatusConflict {
		// Made by someone else since the stat: fine if a directory.
		if unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return false, nil
		}
	}
	return err == nil, err
}

// rename moves From to To, replacing a file (or empty directory) there.
func rename(w http.ResponseWriter, r *http.Request, c Cred) error {
	var req workapi.RenameRequest
	if err := readJSON(w, r, &req); err != nil {
		return err
	}
	if req.From == "" || req.To == "" {
		return fail(http.StatusBadRequest, "from and to are required")
	}
	from, err := c.resolve(req.From)
	if err != nil {
		return err
	}
	to, err := c.resolve(req.To)
	if err != nil {
		return err
	}
	err = c.run(func() error {
		if err := unix.Rename(from, to); err != nil {
			return pathError("rename", from+" to "+to, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// remove removes a file, an empty directory or, with ?recursive=1, a
// directory and everything in it; never "/" nor the user's home.
func remove(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.pathParam(r, "path")
	if err != nil {
		return err
	}
	recursive, err := boolParam(r, "recursive")
	if err != nil {
		return err
	}
	switch {
	case path == "/":
		return fail(http.StatusBadRequest, "remove /: refused")
	case c.Home != "" && path == filepath.Clean(c.Home):
		return fail(http.StatusBadRequest, "remove %s: refused, it is the home directory of %s", path, c.Name)
	}
	err = c.run(func() error {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return pathError("remove", path, err)
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case isDir && recursive:
			// os.RemoveAll does its work with *at calls on this thread.
			if err := os.RemoveAll(path); err != nil {
				return pathError("remove", path, err)
			}
		case isDir:
			if err := unix.Rmdir(path); err == unix.ENOTEMPTY || err == unix.EEXIST {
				return fail(http.StatusConflict, "remove %s: directory not empty (recursive=1 removes it and all in it)", path)
			} else if err != nil {
				return pathError("remove", path, err)
			}
		default:
			if err := unix.Unlink(path); err != nil {
				return pathError("remove", path, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// lstatInfo describes path without following a symlink at it.
func lstatInfo(path string) (workapi.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return workapi.FileInfo{}, pathError("stat", path, err)
	}
	fi := fileInfo(path, &st)
	if fi.Type == "symlink" {
		fi.Target, _ = os.Readlink(path)
	}
	return fi, nil
}

// statAt describes the entry name of the directory dirfd (at dir).
func statAt(dirfd int, dir, name string) (workapi.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return workapi.FileInfo{}, err
	}
	fi := fileInfo(filepath.Join(dir, name), &st)
	if fi.Type == "symlink" {
		buf := make([]byte, unix.PathMax)
		if n, err := unix.Readlinkat(dirfd, name, buf); err == nil {
			fi.Target = string(buf[:n])
		}
	}
	return fi, nil
}

func fileInfo(path string, st *unix.Stat_t) workapi.FileInfo {
	fi := workapi.FileInfo{
		Path:    path,
		Name:    filepath.Base(path),
		Type:    "other",
		Size:    st.Size,
		Mode:    formatMode(st.Mode),
		UID:     int(st.Uid),
		GID:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()).UTC(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fi.Type = "file"
	case unix.S_IFDIR:
		fi.Type = "dir"
	case unix.S_IFLNK:
		fi.Type = "symlink"
	}
	return fi
}

// owners names files' owners, looking each uid up once. It runs on the
// request's goroutine: the user database is the agent's to read.
type owners map[int]string

func (o owners) fill(fi *workapi.FileInfo) {
	if fi.Type == "other" && fi.Mode == "" {
		return // nothing is known of it
	}
	name, ok := o[fi.UID]
	if !ok {
		if u, err := user.LookupId(strconv.Itoa(fi.UID)); err == nil {
			name = u.Username
		}
		o[fi.UID] = name
	}
	fi.Owner = name
}
