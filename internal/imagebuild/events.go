package imagebuild

import (
	"bytes"
	"fmt"
	"io"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/safetext"
)

// EventType says what an Event is.
type EventType string

// A follower gets the build's log as progress and log events, dropped
// where the log's bound removed lines it had not read, and done last.
const (
	EventProgress EventType = "progress" // a builder's phase line ("[4/5] rootfs: ...")
	EventLog      EventType = "log"      // any other line of the log
	EventDropped  EventType = "dropped"  // lines the log no longer keeps
	EventDone     EventType = "done"     // the build ended; Build is its record
)

// Event is one event of a build. Its ID is the log offset after it (a
// follower resumed from it gets what follows); done's is the log's final
// size plus one.
type Event struct {
	ID   int64
	Type EventType
	// Line is the line (progress, log) or what was dropped, as clean text.
	Line string
	// Phase, Step and Steps: a progress line's phase.
	Phase       string
	Step, Steps int
	// Build is the build's record (done).
	Build Build
}

// maxLine bounds a line of an event; a longer one comes in pieces.
const maxLine = 4096

// Follower reads one build's events from a position in its log.
type Follower struct {
	b    *build
	rd   *consolelog.Reader
	line []byte // a line read up to the log's end so far
	buf  []byte
	over bool
}

// Follow returns a follower of build id's events after event id after
// (0: from the start).
func (s *Service) Follow(id string, after int64) (*Follower, error) {
	b, err := s.lookup(id)
	if err != nil {
		return nil, err
	}
	return &Follower{b: b, rd: consolelog.NewReader(b.dir, max(after, 0)), buf: make([]byte, 32<<10)}, nil
}

// Changed returns a channel that is closed when the build next changes.
// Take it before Next, and wait on it after: a change in between closes
// it at once.
func (f *Follower) Changed() <-chan struct{} {
	f.b.mu.Lock()
	defer f.b.mu.Unlock()
	return f.b.changed
}

// Over reports whether done has been returned: nothing follows.
func (f *Follower) Over() bool { return f.over }

// Next returns the events the log holds past the follower's position: the
// complete lines written so far and, once the build has ended and all it
// wrote is read, done.
func (f *Follower) Next() ([]Event, error) {
	if f.over {
		return nil, nil
	}
	// The record first: an ended build wrote its last line before it
	// said so, so reading to the end after finds everything.
	rec := f.b.snapshot()
	var evs []Event
	for {
		before := f.rd.Offset()
		n, err := f.rd.Read(f.buf)
		if n > 0 {
			if skipped := f.rd.Offset() - before; skipped != int64(n) || string(f.buf[:n]) == consolelog.SkipMarker(skipped) {
				// The reader passed over what the bound removed: say so in
				// the build's words, and go on from the oldest line kept.
				f.line = f.line[:0]
				evs = append(evs, Event{ID: f.rd.Offset(), Type: EventDropped,
					Line: fmt.Sprintf("%d bytes of the build log were dropped to keep it within its bound", skipped)})
				continue
			}
			evs = f.lines(evs, f.buf[:n], before)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return evs, err
		}
	}
	if rec.State.Terminal() {
		if len(f.line) > 0 {
			evs = append(evs, lineEvent(f.line, f.rd.Offset()))
			f.line = f.line[:0]
		}
		evs = append(evs, Event{ID: rec.LogSize + 1, Type: EventDone, Build: rec})
		f.over = true
	}
	return evs, nil
}

// lines adds an event for each line p completes; p starts at log offset
// off. A line longer than maxLine comes in pieces, each ending where it
// does in the log.
func (f *Follower) lines(evs []Event, p []byte, off int64) []Event {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		for len(chunk) > 0 {
			if len(f.line) == maxLine {
				evs = append(evs, lineEvent(f.line, off))
				f.line = f.line[:0]
			}
			k := min(len(chunk), maxLine-len(f.line))
			f.line = append(f.line, chunk[:k]...)
			chunk = chunk[k:]
			off += int64(k)
		}
		if i < 0 {
			break
		}
		off++
		evs = append(evs, lineEvent(f.line, off))
		f.line = f.line[:0]
		p = p[i+1:]
	}
	return evs
}

// lineEvent is the event of one line ending at log offset end.
func lineEvent(line []byte, end int64) Event {
	text := safetext.Line(string(line), maxLine)
	if phase, step, steps, ok := parseProgress(text); ok {
		return Event{ID: end, Type: EventProgress, Line: text, Phase: phase, Step: step, Steps: steps}
	}
	return Event{ID: end, Type: EventLog, Line: text}
}
