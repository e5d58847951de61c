package workfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/workapi"
)

const (
	// watchMask is what a stream's root is watched for (following a
	// symlink at the root itself).
	watchMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
		unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_EXCL_UNLINK
	// subdirMask is what the directories below it are watched for: only
	// directories, never through a symlink (no loops, nothing outside).
	subdirMask = watchMask | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW

	// maxFoundEvents bounds the create events sent for what a new
	// directory already held when its watch was added; past it, one
	// overflow event says to rescan it.
	maxFoundEvents = 1000
	// watchWriteTimeout bounds how long one event may wait for a client
	// that does not read.
	watchWriteTimeout = time.Minute
)

// watch streams a path's changes as newline-delimited WatchEvent JSON,
// and with ?recursive=1 those of the directories below it, watched as
// they appear. The answer's status is sent once the watches are in
// place, so a change made after it is seen; the stream ends when the
// client goes away, or when the watched path itself is removed or moved
// (the paths in its events would no longer be true). Watching a file
// ends when it is replaced by a rename too: a new file is a new inode.
func (s *server) watch(w http.ResponseWriter, r *http.Request, c Cred) error {
	path, err := c.resolve(r.URL.Query().Get("path"))
	if err != nil {
		return err
	}
	recursive, err := boolParam(r, "recursive")
	if err != nil {
		return err
	}
	select {
	case s.watchSlots <- struct{}{}:
		defer func() { <-s.watchSlots }()
	default:
		return fail(http.StatusTooManyRequests, "watch %s: %d watch streams are open already", path, cap(s.watchSlots))
	}

	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fail(http.StatusInternalServerError, "watch %s: inotify: %v", path, err)
	}
	// Non-blocking, the descriptor is the runtime poller's: a read waits
	// without holding a thread, and a deadline ends it.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(time.Time{})
	}
	if err != nil {
		return fail(http.StatusInternalServerError, "watch %s: inotify: %v", path, err)
	}
	wt := &watcher{
		cred: c, inotify: rc, root: path, recursive: recursive, max: s.opts.WatchDirs,
		dirs: map[int]string{}, ctl: http.NewResponseController(w), enc: json.NewEncoder(w),
	}
	var found []workapi.WatchEvent
	err = c.run(func() error {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return pathError("watch", path, err)
		}
		wt.rootDir = st.Mode&unix.S_IFMT == unix.S_IFDIR
		var err error
		found, err = wt.addTree(path, watchMask, false)
		if err != nil {
			return pathError("watch", path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if wt.ctl.Flush() != nil || wt.send(found) != nil {
		return nil
	}
	// The client gone, the pending read ends and so does the stream.
	stop := context.AfterFunc(r.Context(), func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	wt.run(f)
	return nil
}

// watcher is one watch stream.
type watcher struct {
	cred      Cred
	inotify   syscall.RawConn
	root      string
	rootDir   bool
	rootWD    int
	recursive bool
	max       int
	// dirs maps each watch descriptor to the path it watches.
	dirs      map[int]string
	limitSent bool

	ctl *http.ResponseController
	enc *json.Encoder
}

// run reads inotify events from f and sends what they say, until the
// read or a write fails or the root is gone.
func (wt *watcher) run(f io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			off += unix.SizeofInotifyEvent
			if off+nameLen > n {
				return // the kernel hands out whole events; never here
			}
			name := string(bytes.TrimRight(buf[off:off+nameLen], "\x00"))
			off += nameLen
			evs, end := wt.event(int(wd), mask, name)
			if wt.send(evs) != nil || end {
				return
			}
		}
	}
}

// event turns one inotify event into the events to send (and watches
// directories that appeared or went); end says the stream is over.
func (wt *watcher) event(wd int, mask uint32, name string) (evs []workapi.WatchEvent, end bool) {
	now := time.Now().UTC()
	if mask&unix.IN_Q_OVERFLOW != 0 {
		return []workapi.WatchEvent{{Kind: workapi.WatchOverflow, Path: wt.root, Dir: wt.rootDir, Time: now}}, false
	}
	dir, ok := wt.dirs[wd]
	if mask&unix.IN_IGNORED != 0 {
		delete(wt.dirs, wd)
		return nil, wd == wt.rootWD // the root is gone (e.g. unmounted)
	}
	if !ok {
		return nil, false // a watch dropped since
	}
	if name == "" {
		// An event of a watched directory (or file) itself: only the
		// root's are told, a subdirectory's parent tells its own.
		if wd != wt.rootWD {
			return nil, false
		}
		ev := workapi.WatchEvent{Path: wt.root, Dir: wt.rootDir, Time: now}
		switch {
		case mask&unix.IN_DELETE_SELF != 0:
			ev.Kind, end = workapi.WatchRemove, true
		case mask&unix.IN_MOVE_SELF != 0:
			ev.Kind, end = workapi.WatchRename, true
		case mask&unix.IN_CLOSE_WRITE != 0:
			ev.Kind = workapi.WatchWrite
		case mask&unix.IN_ATTRIB != 0:
			ev.Kind = workapi.WatchAttrib
		default:
			return nil, false
		}
		return []workapi.WatchEvent{ev}, end
	}
	ev := workapi.WatchEvent{Path: filepath.Join(dir, name), Dir: mask&unix.IN_ISDIR != 0, Time: now}
	switch {
	case mask&unix.IN_CREATE != 0:
		ev.Kind = workapi.WatchCreate
		evs = []workapi.WatchEvent{ev}
		if wt.recursive && ev.Dir {
			evs = append(evs, wt.grow(ev.Path, true)...)
		}
	case mask&unix.IN_MOVED_TO != 0:
		ev.Kind = workapi.WatchRename
		evs = []workapi.WatchEvent{ev}
		if wt.recursive && ev.Dir {
			evs = append(evs, wt.grow(ev.Path, false)...)
		}
	case mask&unix.IN_MOVED_FROM != 0:
		ev.Kind = workapi.WatchRename
		evs = []workapi.WatchEvent{ev}
		if ev.Dir {
			wt.prune(ev.Path)
		}
	case mask&unix.IN_CLOSE_WRITE != 0:
		ev.Kind = workapi.WatchWrite
		evs = []workapi.WatchEvent{ev}
	case mask&unix.IN_DELETE != 0:
		ev.Kind = workapi.WatchRemove
		evs = []workapi.WatchEvent{ev}
	case mask&unix.IN_ATTRIB != 0:
		ev.Kind = workapi.WatchAttrib
		evs = []workapi.WatchEvent{ev}
	}
	return evs, false
}

// grow watches a directory that appeared in the tree, and the ones below
// it, as the user. With created (a new directory, rather than one moved
// in) it also tells what the directory already held: entries made before
// its watch was added would otherwise go untold.
func (wt *watcher) grow(dir string, created bool) []workapi.WatchEvent {
	var evs []workapi.WatchEvent
	err := wt.cred.run(func() error {
		var err error
		evs, err = wt.addTree(dir, subdirMask, created)
		if err != nil && err != unix.ENOENT && err != unix.ENOTDIR {
			evs = append(evs, wt.errorEvent(dir, "watch: "+err.Error()))
		}
		return nil
	})
	if err != nil {
		evs = append(evs, wt.errorEvent(dir, err.Error()))
	}
	return evs
}

// prune drops the watches of a directory moved away and those below it:
// their paths are no longer true (one moved within the tree is watched
// again under its new name).
func (wt *watcher) prune(dir string) {
	for wd, d := range wt.dirs {
		if wd != wt.rootWD && (d == dir || strings.HasPrefix(d, dir+"/")) {
			_ = wt.inotify.Control(func(fd uintptr) { _, _ = unix.InotifyRmWatch(int(fd), uint32(wd)) })
			delete(wt.dirs, wd)
		}
	}
}

// addTree watches top with mask and, if the stream is recursive, the
// directories below it, breadth first, while the stream's limit allows.
// It runs on a user thread. The error is top's own; what goes wrong
// below it is told in error events. With found, it returns a create
// event for each entry found (up to maxFoundEvents, then an overflow).
func (wt *watcher) addTree(top string, mask uint32, found bool) ([]workapi.WatchEvent, error) {
	var evs []workapi.WatchEvent
	nfound := 0
	queue := []string{top}
	for len(queue) > 0 {
		dir := queue[0]
		queue = queue[1:]
		if len(wt.dirs) >= wt.max {
			evs = append(evs, wt.limitEvent(dir)...)
			break
		}
		wd, err := wt.addWatch(dir, mask)
		if dir == top && err != nil {
			return evs, err
		}
		switch err {
		case nil:
		case unix.ENOENT, unix.ENOTDIR:
			continue // gone, or replaced by a file, since it was found
		default:
			evs = append(evs, wt.errorEvent(dir, "watch: "+err.Error()))
			continue
		}
		if dir == wt.root {
			wt.rootWD = wd
		}
		wt.dirs[wd] = dir
		mask = subdirMask
		if !wt.recursive || (dir == wt.root && !wt.rootDir) {
			break
		}
		err = readDir(dir, dir == wt.root, func(name string, isDir bool) {
			p := filepath.Join(dir, name)
			if found {
				if nfound++; nfound <= maxFoundEvents {
					evs = append(evs, workapi.WatchEvent{Kind: workapi.WatchCreate, Path: p, Dir: isDir, Time: time.Now().UTC()})
				} else if nfound == maxFoundEvents+1 {
					evs = append(evs, workapi.WatchEvent{Kind: workapi.WatchOverflow, Path: top, Dir: true, Time: time.Now().UTC()})
				}
			}
			if !isDir {
				return
			}
			if len(wt.dirs)+len(queue) >= wt.max {
				evs = append(evs, wt.limitEvent(p)...)
				return
			}
			queue = append(queue, p)
		})
		if err != nil && err != unix.ENOENT {
			evs = append(evs, wt.errorEvent(dir, "list: "+err.Error()))
		}
	}
	return evs, nil
}

// addWatch adds (or updates) the inotify watch of path; on a user thread,
// the kernel checks the user may read it.
func (wt *watcher) addWatch(path string, mask uint32) (int, error) {
	wd, err := -1, error(nil)
	if cerr := wt.inotify.Control(func(fd uintptr) { wd, err = unix.InotifyAddWatch(int(fd), path, mask) }); cerr != nil {
		return -1, cerr
	}
	return wd, err
}

// readDir calls fn for each entry of dir, a batch at a time. A symlink
// to a directory is not a directory here, and dir itself is not followed
// unless follow.
func readDir(dir string, follow bool, fn func(name string, isDir bool)) error {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(dir, flags, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	for {
		batch, err := d.ReadDir(256)
		for _, e := range batch {
			fn(e.Name(), e.IsDir())
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// limitEvent tells, once per stream, that the stream's limit of watched
// directories is reached.
func (wt *watcher) limitEvent(dir string) []workapi.WatchEvent {
	if wt.limitSent {
		return nil
	}
	wt.limitSent = true
	return []workapi.WatchEvent{wt.errorEvent(dir, fmt.Sprintf(
		"watch limit of %d directories reached: this directory and those found after it are not watched", wt.max))}
}

// errorEvent tells what went wrong at path; msg need not name it.
func (wt *watcher) errorEvent(path, msg string) workapi.WatchEvent {
	return workapi.WatchEvent{Kind: workapi.WatchError, Path: path, Dir: true, Time: time.Now().UTC(), Error: msg}
}

// send writes events, each flushed as it is written.
func (wt *watcher) send(evs []workapi.WatchEvent) error {
	for _, ev := range evs {
		// Not every writer has deadlines; one that has bounds a client
		// that stops reading.
		_ = wt.ctl.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		if err := wt.enc.Encode(ev); err != nil {
			return err
		}
		if err := wt.ctl.Flush(); err != nil {
			return err
		}
	}
	return nil
}
