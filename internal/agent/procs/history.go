package procs

import (
	"context"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/workapi"
)

// chunkOverhead is what each stretch of output of one kind costs the
// history besides its bytes, so that output alternating between stdout
// and stderr byte by byte stays bounded too.
const chunkOverhead = 64

// chunk is a stretch of output of one kind, at most MaxFrameData bytes:
// one frame's worth. Its bytes are never changed once written (appending
// writes past them; dropping reslices), so a reader may send them without
// holding the lock.
type chunk struct {
	off  int64
	kind byte
	data []byte
}

// history is a process's output: the last limit bytes of stdout and
// stderr in arrival order, one offset counting both, and the readers
// sending it. A following reader holds the process's output up (write
// waits) rather than lose bytes, for at most stall without taking any;
// then it is cut loose, and told what it lost when it reads on.
type history struct {
	limit int
	stall time.Duration

	mu       sync.Mutex
	chunks   []chunk
	size     int   // bytes of chunks plus their overhead
	start    int64 // offset of the oldest byte kept
	end      int64 // offset past the newest byte
	stdout   int64
	stderr   int64
	dropped  int64 // bytes some follower could not be given
	readers  map[*reader]struct{}
	follows  int  // readers following now
	followed bool // some reader has followed
	exit     *workapi.Exit
	// changed is closed (and replaced) on every change readers or
	// writers wait for.
	changed chan struct{}
	// lastGone, if set, is called (without the lock) when the last
	// follower detaches.
	lastGone func()
}

// reader is one /output request's place in the history.
type reader struct {
	pos    int64
	follow bool
	// stallSince is when a writer began waiting for this reader to take
	// bytes (zero while it is not waited for); cut says it waited
	// longer than the stall limit, so writers no longer wait for it.
	stallSince time.Time
	cut        bool
}

func newHistory(limit int, stall time.Duration) *history {
	return &history{limit: limit, stall: stall, readers: map[*reader]struct{}{}, changed: make(chan struct{})}
}

// notify wakes everything waiting on h.changed. h.mu is held.
func (h *history) notify() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// write appends p, of kind FrameStdout or FrameStderr, waiting first for
// followers that have yet to take the bytes it would drop (see history).
func (h *history) write(kind byte, p []byte) {
	for len(p) > 0 {
		n := min(len(p), h.limit/2)
		h.writePiece(kind, p[:n])
		p = p[n:]
	}
}

func (h *history) writePiece(kind byte, p []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	newStart := h.startAfter(kind, len(p))
	for {
		var wake time.Time
		now := time.Now()
		for r := range h.readers {
			if !r.follow || r.cut || r.pos >= newStart {
				continue
			}
			if r.stallSince.IsZero() {
				r.stallSince = now
			}
			if d := r.stallSince.Add(h.stall); !now.Before(d) {
				r.cut = true
			} else if wake.IsZero() || d.Before(wake) {
				wake = d
			}
		}
		if wake.IsZero() {
			break // nobody to wait for
		}
		ch := h.changed
		h.mu.Unlock()
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
		h.mu.Lock()
	}
	// What followers lose: from the lowest position of one that has not
	// taken it to the new start, counted once however many lose it.
	lowest := newStart
	for r := range h.readers {
		if r.follow && r.pos < lowest {
			lowest = r.pos
		}
	}
	h.dropped += newStart - max(lowest, h.start)
	h.dropTo(newStart)
	h.appendData(kind, p)
	h.notify()
}

// startAfter returns where the history would start once n bytes of kind
// are appended.
func (h *history) startAfter(kind byte, n int) int64 {
	over := h.size + n - h.limit
	if !h.extends(kind, n) {
		over += chunkOverhead
	}
	for _, c := range h.chunks {
		if over <= 0 {
			return c.off
		}
		if over < len(c.data)+chunkOverhead {
			return c.off + int64(min(over, len(c.data)))
		}
		over -= len(c.data) + chunkOverhead
	}
	return h.end
}

// extends says whether n bytes of kind go into the last chunk.
func (h *history) extends(kind byte, n int) bool {
	if len(h.chunks) == 0 {
		return false
	}
	last := h.chunks[len(h.chunks)-1]
	return last.kind == kind && len(last.data)+n <= workapi.MaxFrameData
}

// dropTo discards the history before offset off.
func (h *history) dropTo(off int64) {
	for len(h.chunks) > 0 && h.start < off {
		c := &h.chunks[0]
		if c.off+int64(len(c.data)) <= off {
			h.size -= len(c.data) + chunkOverhead
			h.chunks[0] = chunk{}
			h.chunks = h.chunks[1:]
		} else {
			k := int(off - c.off)
			h.size -= k
			c.data, c.off = c.data[k:], off
		}
		if len(h.chunks) > 0 {
			h.start = h.chunks[0].off
		} else {
			h.start = h.end
		}
	}
}

func (h *history) appendData(kind byte, p []byte) {
	if h.extends(kind, len(p)) {
		last := &h.chunks[len(h.chunks)-1]
		last.data = append(last.data, p...)
	} else {
		data := make([]byte, len(p), max(len(p), 4096))
		copy(data, p)
		h.chunks = append(h.chunks, chunk{off: h.end, kind: kind, data: data})
		h.size += chunkOverhead
	}
	h.size += len(p)
	h.end += int64(len(p))
	if kind == workapi.FrameStderr {
		h.stderr += int64(len(p))
	} else {
		h.stdout += int64(len(p))
	}
	if len(h.chunks) == 1 {
		h.start = h.chunks[0].off
	}
}

// finish records the process's end: readers send what is left, then the
// exit.
func (h *history) finish(e workapi.Exit) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.exit = &e
	h.notify()
}

// attach adds a reader at offset from (the start of the history if
// negative).
func (h *history) attach(from int64, follow bool) *reader {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from < 0 {
		from = h.start
	}
	r := &reader{pos: from, follow: follow}
	h.readers[r] = struct{}{}
	if follow {
		h.follows++
		h.followed = true
	}
	return r
}

// detach removes r; the last follower's going calls lastGone.
func (h *history) detach(r *reader) {
	h.mu.Lock()
	delete(h.readers, r)
	last := false
	if r.follow {
		h.follows--
		last = h.follows == 0 && h.exit == nil
	}
	h.notify()
	gone := h.lastGone
	h.mu.Unlock()
	if last && gone != nil {
		gone()
	}
}

// next returns r's next frame: what it lost, if the history moved past
// it; else output from its position (whose bytes stay valid); else, at
// the end, the exit if the process has ended. A reader that does not follow gets io.EOF at the end of a
// running process's output; a follower waits for more until ctx is done.
func (h *history) next(ctx context.Context, r *reader) (workapi.Frame, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		if r.pos < h.start {
			d := &workapi.Dropped{From: r.pos, To: h.start}
			r.pos, r.stallSince, r.cut = h.start, time.Time{}, false
			return workapi.Frame{Kind: workapi.FrameDropped, Dropped: d}, nil
		}
		if r.pos < h.end {
			// The reader has the bytes now (they stay valid once
			// dropped); until it comes back for more, writers wait for
			// it as for a reader that is slow to take them.
			c := h.chunkAt(r.pos)
			data := c.data[r.pos-c.off:]
			data = data[:min(len(data), workapi.MaxFrameData)]
			f := workapi.Frame{Kind: c.kind, Offset: r.pos, Data: data}
			r.pos += int64(len(data))
			r.stallSince, r.cut = time.Time{}, false
			h.notify()
			return f, nil
		}
		if h.exit != nil {
			e := *h.exit
			return workapi.Frame{Kind: workapi.FrameExit, Exit: &e}, nil
		}
		if !r.follow {
			return workapi.Frame{}, io.EOF
		}
		ch := h.changed
		h.mu.Unlock()
		select {
		case <-ch:
			h.mu.Lock()
		case <-ctx.Done():
			h.mu.Lock()
			return workapi.Frame{}, ctx.Err()
		}
	}
}

// chunkAt returns the chunk holding offset off (start <= off < end).
func (h *history) chunkAt(off int64) chunk {
	i := sort.Search(len(h.chunks), func(i int) bool { return h.chunks[i].off+int64(len(h.chunks[i].data)) > off })
	return h.chunks[i]
}

// state is the history's part of a Process.
func (h *history) state(p *workapi.Process) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p.StdoutBytes, p.StderrBytes = h.stdout, h.stderr
	p.HistoryStart, p.DroppedBytes, p.Followers = h.start, h.dropped, h.follows
}
