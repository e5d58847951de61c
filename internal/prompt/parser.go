package prompt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/safetext"
)

// Parser turns one run's stdout into Events. Feed takes the output in
// pieces of any size as it arrives and returns the events of the lines
// it completed; Finish takes the exit status once the CLI has ended and
// returns the events of the last line and, for a run that ended without
// a result, an error event. A Parser is not safe for concurrent use.
type Parser interface {
	Feed(p []byte) []Event
	// Finish ends the run: exitCode is the CLI's exit status (negative
	// when a signal ended it) and stderrTail the end of what it wrote on
	// stderr (only the last MaxStderrTail bytes are used, cleaned).
	Finish(exitCode int, stderrTail []byte) []Event
	// Stats counts the lines seen so far.
	Stats() Stats
}

// Stats counts a run's stdout lines.
type Stats struct {
	Lines   int `json:"lines"`   // lines taken as events of the format
	Skipped int `json:"skipped"` // lines that were not JSON objects of the format
	TooLong int `json:"too_long"`
}

// decoder is the format-specific part of a Parser: it decodes one line
// (a JSON object) into events.
type decoder interface {
	// decode returns false for a line that is not of the format.
	decode(line []byte, emit func(Event)) bool
	// done reports whether the run's result has been emitted.
	done() bool
}

// NewParser returns the parser for a provider prompt format
// (provider.FormatClaudeStreamJSON, ...). cli names the CLI in the
// messages Finish writes ("claude").
func NewParser(format, cli string) (Parser, error) {
	var d decoder
	switch format {
	case provider.FormatClaudeStreamJSON:
		d = &claudeDecoder{}
	case provider.FormatCodexExecJSONL:
		d = &codexDecoder{now: time.Now}
	case provider.FormatGeminiStreamJSON:
		d = &geminiDecoder{}
	default:
		return nil, fmt.Errorf("unknown prompt output format %q (known: %s)", format, strings.Join(provider.PromptFormats(), ", "))
	}
	return &lineParser{dec: d, cli: safetext.Line(cli, MaxIDBytes)}, nil
}

// lineParser splits stdout into bounded lines for a decoder.
type lineParser struct {
	dec      decoder
	cli      string
	buf      []byte
	tooLong  bool // the current line passed MaxLineBytes: drop it
	stats    Stats
	finished bool
}

func (p *lineParser) Stats() Stats { return p.stats }

func (p *lineParser) Feed(b []byte) []Event {
	if p.finished {
		return nil
	}
	var out []Event
	emit := func(e Event) { out = append(out, e) }
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		if !p.tooLong {
			if len(p.buf)+len(chunk) > MaxLineBytes {
				p.tooLong, p.buf = true, p.buf[:0]
			} else {
				p.buf = append(p.buf, chunk...)
			}
		}
		if i < 0 {
			break
		}
		p.endLine(emit)
		b = b[i+1:]
	}
	return out
}

// endLine decodes the buffered line.
func (p *lineParser) endLine(emit func(Event)) {
	if p.tooLong {
		p.stats.TooLong++
		p.tooLong = false
		p.buf = p.buf[:0]
		return
	}
	line := bytes.TrimSpace(p.buf)
	switch {
	case len(line) == 0:
	case line[0] != '{' || !json.Valid(line) || !p.dec.decode(line, emit):
		p.stats.Skipped++
	default:
		p.stats.Lines++
	}
	if cap(p.buf) > 64<<10 {
		p.buf = nil // do not keep a large buffer for the rest of the run
	} else {
		p.buf = p.buf[:0]
	}
}

func (p *lineParser) Finish(exitCode int, stderrTail []byte) []Event {
	if p.finished {
		return nil
	}
	var out []Event
	emit := func(e Event) { out = append(out, e) }
	if len(p.buf) > 0 || p.tooLong {
		p.endLine(emit)
	}
	p.finished = true
	if p.dec.done() {
		return out
	}
	var msg strings.Builder
	switch {
	case exitCode < 0:
		fmt.Fprintf(&msg, "%s was stopped by a signal before it gave a result", p.cli)
	case exitCode > 0:
		fmt.Fprintf(&msg, "%s exited with status %d", p.cli, exitCode)
	default:
		fmt.Fprintf(&msg, "%s exited without a result", p.cli)
	}
	if n := p.stats.Skipped + p.stats.TooLong; n > 0 {
		fmt.Fprintf(&msg, " (%d lines of its output were not its events)", n)
	}
	if len(stderrTail) > MaxStderrTail {
		stderrTail = stderrTail[len(stderrTail)-MaxStderrTail:]
	}
	if tail := strings.TrimSpace(safetext.Text(string(stderrTail), MaxStderrTail)); tail != "" {
		msg.WriteString(": ")
		msg.WriteString(tail)
	}
	emit(Event{Type: TypeError, Message: msg.String()})
	return out
}

// clip bounds s as valid UTF-8, saying whether it cut anything.
func clip(s string, max int) (string, bool) {
	return safetext.Clip(s, max), len(s) > max
}

// text sets e.Text to s bounded by MaxTextBytes.
func (e *Event) setText(s string) {
	var cut bool
	e.Text, cut = clip(s, MaxTextBytes)
	e.Truncated = e.Truncated || cut
}

func (e *Event) setOutput(s string) {
	var cut bool
	e.Output, cut = clip(s, MaxOutputBytes)
	e.Truncated = e.Truncated || cut
}

func (e *Event) setMessage(s string) {
	var cut bool
	e.Message, cut = clip(s, MaxMessageLen)
	e.Truncated = e.Truncated || cut
}

// setInput sets e.Input to raw re-encoded (valid UTF-8, compact), or
// leaves it out and marks the event truncated when it is larger than
// MaxInputBytes.
func (e *Event) setInput(raw json.RawMessage) {
	if len(raw) == 0 || len(raw) > MaxLineBytes {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil || v == nil {
		return
	}
	b, err := json.Marshal(v)
	switch {
	case err != nil:
	case len(b) > MaxInputBytes:
		e.Truncated = true
	default:
		e.Input = b
	}
}

// id bounds an id, name or model as one clean line (they are shown as
// labels).
func id(s string) string { return safetext.Line(s, MaxIDBytes) }

// textBuilder collects text up to MaxTextBytes.
type textBuilder struct {
	b   strings.Builder
	cut bool
}

func (t *textBuilder) add(s string) {
	room := MaxTextBytes - t.b.Len()
	if len(s) > room {
		s, t.cut = s[:max(room, 0)], true
	}
	t.b.WriteString(s)
}

// result returns a result event holding the collected text.
func (t *textBuilder) result() Event {
	e := Event{Type: TypeResult}
	e.setText(t.b.String())
	e.Truncated = e.Truncated || t.cut
	return e
}
