package vm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vmm"
)

// ConsoleConfig bounds each VM's console log on disk and how fast the
// daemon reads a VM's console.
type ConsoleConfig struct {
	Limits consolelog.Limits
	// Rate is the most bytes per second read from one VM's console, Burst
	// the most read at once after a quiet spell. A guest that writes
	// faster is held back by its VMM, never by other VMs' reads.
	Rate, Burst int64
}

// DefaultConsole is what a zero Config.Console means.
var DefaultConsole = ConsoleConfig{Limits: consolelog.Limits{Max: 16 << 20, Head: 1 << 20}, Rate: 128 << 10, Burst: 1 << 20}

func (c ConsoleConfig) orDefault() ConsoleConfig {
	if c == (ConsoleConfig{}) {
		return DefaultConsole
	}
	return c
}

// consoleDir is the name of a VM's console log in its directory.
const consoleDir = "console"

// consoleDrain bounds how long the last words of a VM whose process ended
// are read before it is failed.
const consoleDrain = time.Second

// ConsolePath is where a VM's console is kept: a consolelog directory in
// the VM's directory, or for a VM started by an older hearth the file its
// VMM writes itself.
func ConsolePath(v store.VM) string {
	if h, err := vmm.UnmarshalHandle(v.Handle); err == nil && h.ConsoleStream == "" && h.ConsolePath != "" {
		return h.ConsolePath
	}
	return filepath.Join(v.Dir, consoleDir)
}

// ConsoleTail returns up to n bytes from the end of the VM's console log,
// starting at a line boundary when it does not start at the log's first
// byte, as clean text (package safetext): the guest wrote it, and whoever
// reads it may print it on a terminal.
func ConsoleTail(v store.VM, n int64) string {
	b, err := consolelog.TailLines(ConsolePath(v), n)
	if err != nil || len(b) == 0 {
		return ""
	}
	return safetext.Text(string(b), 0)
}

// consoleRecorder reads one VM's console into its log while the VM's
// supervisor runs, re-opening the stream when it breaks.
type consoleRecorder struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	src      vmm.ConsoleReader // the stream being read, if any
	draining bool
}

// recordConsole starts recording v's console, unless its VMM writes the
// console itself (a VM started by an older hearth).
func (m *Manager) recordConsole(v store.VM, h vmm.Handle) *consoleRecorder {
	ctx, cancel := context.WithCancel(m.ctx)
	r := &consoleRecorder{cancel: cancel, done: make(chan struct{})}
	if h.ConsoleStream == "" {
		close(r.done)
		return r
	}
	log := m.log.With("vm", v.ID)
	cfg := m.cfg.Console.orDefault()
	w, err := consolelog.Open(ConsolePath(v), cfg.Limits)
	if err != nil {
		log.Error("console not recorded", "err", err)
		close(r.done)
		return r
	}
	// The first open is made here, before the supervisor goes on: what a
	// guest writes from now on is kept even if it dies at once (a pipe's
	// contents go with its last reader and writer). One that fails is
	// nil, and run tries again.
	src, _ := vmm.OpenConsole(ctx, h)
	go r.run(ctx, cfg, w, src, h, log)
	return r
}

func (r *consoleRecorder) run(ctx context.Context, cfg ConsoleConfig, w *consolelog.Writer, src vmm.ConsoleReader, h vmm.Handle, log *slog.Logger) {
	defer close(r.done)
	defer w.Close()
	bucket := consolelog.NewBucket(cfg.Rate, cfg.Burst)
	var lastDrop time.Time
	dropped := func(n int, err error) {
		// A full disk: say so now and then, not for every read.
		if time.Since(lastDrop) > time.Minute {
			lastDrop = time.Now()
			log.Warn("console output dropped", "bytes", n, "err", err)
		}
	}
	const minBackoff, maxBackoff = 100 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	for {
		var err error
		if src == nil {
			src, err = vmm.OpenConsole(ctx, h)
		}
		if err == nil {
			r.mu.Lock()
			r.src = src
			r.mu.Unlock()
			cur := src
			stop := context.AfterFunc(ctx, func() { cur.Close() })
			started := time.Now()
			err = consolelog.Copy(ctx, w, src, bucket, dropped)
			stop()
			src.Close()
			src = nil
			r.mu.Lock()
			r.src = nil
			r.mu.Unlock()
			if time.Since(started) > maxBackoff {
				backoff = minBackoff
			}
		}
		r.mu.Lock()
		draining := r.draining
		r.mu.Unlock()
		if ctx.Err() != nil || draining {
			return
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Debug("console stream", "err", err)
		}
		// The VMM's end is not there (yet, or any more): try again while
		// the supervisor runs.
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// stop ends the recording. With drain > 0 (the VM's process has exited)
// what its console still holds is read first, for at most drain.
func (r *consoleRecorder) stop(drain time.Duration) {
	if drain > 0 {
		r.mu.Lock()
		r.draining = true
		if r.src != nil {
			_ = r.src.SetReadDeadline(time.Now().Add(drain))
		}
		r.mu.Unlock()
		t := time.NewTimer(drain + drain/2)
		select {
		case <-r.done:
		case <-t.C:
		}
		t.Stop()
	}
	r.cancel()
	<-r.done
}
