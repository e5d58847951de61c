package image

import (
	"fmt"
	"io"
	"time"
)

// progress writes phase-by-phase progress lines such as
//
//	[1/5] kernel: downloading linux-image-6.1.0-57-amd64 6.1.192-3 ... done (1.4s)
//
// to BuildOptions.Log. A nil writer discards everything.
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
