package build

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// progress writes phase-by-phase progress lines such as
//
//	[1/5] kernel: downloading linux-image-6.1.0-57-amd64 6.1.192-3 ... done (1.4s)
//
// to Options.Log. A nil writer discards everything.
type progress struct {
	w     io.Writer
	total int
	index int
	phase string
}

// newProgress returns a progress writer for a build of total phases.
func newProgress(w io.Writer, total int) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, total: total}
}

// start begins phase index (1-based) named phase.
func (p *progress) start(index int, phase string) {
	p.index, p.phase = index, phase
}

// prefix is the "[i/n] phase: " head of every line.
func (p *progress) prefix() string {
	return fmt.Sprintf("[%d/%d] %s: ", p.index, p.total, p.phase)
}

// task runs fn, announcing desc before and its outcome and duration after,
// on one line.
func (p *progress) task(desc string, fn func() error) error {
	fmt.Fprintf(p.w, "%s%s ...", p.prefix(), desc)
	begin := time.Now()
	err := fn()
	outcome := "done"
	if err != nil {
		outcome = "failed"
	}
	fmt.Fprintf(p.w, " %s (%s)\n", outcome, formatDuration(time.Since(begin)))
	return err
}

// note writes one informational line for the current phase.
func (p *progress) note(format string, args ...any) {
	fmt.Fprintf(p.w, "%s%s\n", p.prefix(), fmt.Sprintf(format, args...))
}

// formatDuration renders d with 0.1 s resolution ("1.4s").
func formatDuration(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// long runs fn, a task long enough to deserve a progress meter: a line
// announcing desc, meter lines while it runs, then a line with the outcome.
func (p *progress) long(desc string, fn func(*meter) error) error {
	fmt.Fprintf(p.w, "%s%s ...\n", p.prefix(), desc)
	begin := time.Now()
	m := &meter{p: p, tty: isTerminal(p.w), begin: begin}
	err := fn(m)
	m.finish()
	outcome := "done"
	if err != nil {
		outcome = "failed"
	}
	fmt.Fprintf(p.w, "%s%s %s (%s)\n", p.prefix(), desc, outcome, formatDuration(time.Since(begin)))
	return err
}

// meter shows the progress of one long task. On a terminal it redraws one
// line ("\r", no ANSI escapes); elsewhere it writes a line at every tenth
// of the total (or every 15 s when the total is unknown).
type meter struct {
	p          *progress
	tty        bool
	begin      time.Time
	lastDecile int
	lastLine   time.Time
	drawn      bool
}

// meterWidth is the number of characters in the bar.
const meterWidth = 30

// update reports done of total units (total 0: unknown) and what is
// happening now.
func (m *meter) update(done, total int, detail string) {
	if m == nil {
		return
	}
	line := m.p.prefix() + m.render(done, total, detail)
	if m.tty {
		if len(line) > 120 {
			line = line[:120]
		}
		fmt.Fprintf(m.p.w, "\r%-120s", line)
		m.drawn = true
		return
	}
	now := time.Now()
	if total > 0 {
		decile := done * 10 / total
		if decile <= m.lastDecile {
			return
		}
		m.lastDecile = decile
	} else if now.Sub(m.lastLine) < 15*time.Second {
		return
	}
	m.lastLine = now
	fmt.Fprintln(m.p.w, line)
}

// render formats "[#####.....]  50% 12/24 detail" (or "... detail").
func (m *meter) render(done, total int, detail string) string {
	elapsed := formatDuration(time.Since(m.begin))
	if total <= 0 {
		return fmt.Sprintf("%s (%s)", detail, elapsed)
	}
	done = min(max(done, 0), total)
	fill := done * meterWidth / total
	bar := strings.Repeat("#", fill) + strings.Repeat(".", meterWidth-fill)
	return fmt.Sprintf("[%s] %3d%% %d/%d %s (%s)", bar, done*100/total, done, total, detail, elapsed)
}

// finish ends the meter's line on a terminal.
func (m *meter) finish() {
	if m.tty && m.drawn {
		fmt.Fprintf(m.p.w, "\r%-120s\r", "")
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
