package firecracker

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
)

// followInterval is how often a VM's log and metrics files are read.
const followInterval = time.Second

// maxLogLine bounds one forwarded line; longer ones are cut.
const maxLogLine = 8 << 10

// follow forwards the Firecracker log and metrics of h into the driver's
// logger until exited is closed (then once more, for the last lines). A VM
// is followed once however often it is watched. Forwarding starts at the
// files' start for a VM this driver started, else at their current end:
// what an earlier daemon already forwarded is not repeated.
func (d *Driver) follow(h vmm.Handle, exited <-chan struct{}) {
	d.mu.Lock()
	if d.followers[h.Dir] {
		d.mu.Unlock()
		return
	}
	d.followers[h.Dir] = true
	fromStart := d.started[h.Dir]
	delete(d.started, h.Dir)
	d.mu.Unlock()

	root := h.Dir
	if h.Jail != "" {
		root = h.Jail
	}
	vmID := filepath.Base(h.Dir)
	logs := newTail(filepath.Join(root, fileLog), fromStart)
	metrics := newTail(filepath.Join(root, fileMetrics), fromStart)
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.followers, h.Dir)
			d.mu.Unlock()
		}()
		t := time.NewTicker(followInterval)
		defer t.Stop()
		for {
			done := false
			select {
			case <-exited:
				done = true
			case <-t.C:
			}
			logs.lines(func(line []byte) {
				d.log.Info("firecracker", "vm", vmID, "line", string(line))
			})
			metrics.lines(func(line []byte) {
				if json.Valid(line) {
					d.log.Debug("firecracker metrics", "vm", vmID, "metrics", json.RawMessage(line))
				}
			})
			if done {
				return
			}
		}
	}()
}

// tail reads whole lines appended to a file since the last call.
type tail struct {
	path    string
	off     int64
	partial []byte
}

func newTail(path string, fromStart bool) *tail {
	t := &tail{path: path}
	if fi, err := os.Stat(path); err == nil && !fromStart {
		t.off = fi.Size()
	}
	return t
}

func (t *tail) lines(fn func([]byte)) {
	f, err := os.Open(t.path)
	if err != nil {
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < t.off {
		t.off, t.partial = 0, nil // truncated or replaced
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, t.off, 1<<62), 64<<10)
	for {
		chunk, err := r.ReadSlice('\n')
		t.off += int64(len(chunk))
		if len(t.partial)+len(chunk) <= maxLogLine {
			t.partial = append(t.partial, chunk...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return // the rest of an unfinished line stays in partial
		}
		if line := bytes.TrimSpace(t.partial); len(line) > 0 {
			fn(line)
		}
		t.partial = t.partial[:0]
	}
}

// maxExitReason bounds ExitReason's answer.
const maxExitReason = 300

// ExitReason implements vmm.ExitExplainer: the last error and exit lines
// Firecracker wrote to its log (or, failing that, printed), e.g. a KVM
// error, or "exit_code=0" after the guest rebooted.
func (d *Driver) ExitReason(h vmm.Handle) string {
	root := h.Dir
	if h.Jail != "" {
		root = h.Jail
	}
	for _, name := range []string{fileLog, fileOut} {
		var picked []string
		for _, l := range lastLines(filepath.Join(root, name), 16<<10) {
			if strings.Contains(l, "rror") || strings.Contains(l, "exit_code") || strings.Contains(l, "panic") {
				picked = append(picked, l)
			}
		}
		if len(picked) > 2 {
			picked = picked[len(picked)-2:]
		}
		if why := strings.Join(picked, " | "); why != "" {
			if len(why) > maxExitReason {
				why = "…" + why[len(why)-maxExitReason:]
			}
			return "firecracker: " + why
		}
	}
	return ""
}

// lastLines returns the non-empty lines in the last n bytes of a file.
func lastLines(path string, n int64) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(fi.Size()-n, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil
	}
	var out []string
	for i, l := range strings.Split(string(b), "\n") {
		if i == 0 && off > 0 {
			continue // a partial line
		}
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
