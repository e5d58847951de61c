package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/tokenbucket"
	"github.com/hearth-project/hearth/internal/vmm"
)

// What Firecracker writes besides the console (its log, its metrics, its
// standard output and error) goes into named pipes the daemon reads; it
// opens them non-blocking and read-write, as it does the console's, so a
// line a full pipe cannot take is lost, counted in its metrics
// (missed_log_count) and never waited for. The daemon reads each pipe at a
// bounded rate, keeps the log and the output in a bounded log on disk
// (consolelog: the first lines for good, the latest in a rolling tail),
// which ExitReason reads, and copies lines into its own log through a
// token bucket per VM, saying from time to time how many it left out.

const (
	// followInterval is how often a VM's pipes are read.
	followInterval = time.Second
	// readPerTick bounds what one read of one pipe takes: a pipe's
	// default capacity, so a pipe is emptied each time unless Firecracker
	// writes faster than that, in which case it drops the excess.
	readPerTick = 64 << 10
	// drainMax bounds the last read of a pipe once the process ended.
	drainMax = 1 << 20
	// maxLogLine bounds one log or output line; longer ones are cut.
	maxLogLine = 8 << 10
	// maxMetricsLine bounds one metrics line (Firecracker's are several
	// KiB); a longer one is cut, so not valid JSON, and dropped.
	maxMetricsLine = 64 << 10
	// summaryEvery is the least time between two summaries of lines left
	// out of hearth's log for one VM.
	summaryEvery = 10 * time.Second
	// legacyKeep is how much of the end of a log file an older hearth had
	// Firecracker write is kept when the part already read is freed.
	legacyKeep = 64 << 10
	// legacySkip is how far the reader of such a file may fall behind;
	// beyond it, it skips to the last legacyKeep bytes.
	legacySkip = 1 << 20
	// followerWait bounds how long Cleanup (and a new launch) waits for a
	// VM's follower to finish after its process ended.
	followerWait = 5 * time.Second
)

// Defaults of the Config fields bounding Firecracker's own output.
const (
	DefaultLogMaxSize = 1 << 20
	DefaultLogRate    = 10
	DefaultLogBurst   = 50
	// MinLogMaxSize is the smallest LogMaxSize New takes.
	MinLogMaxSize = 32 << 10
)

// Kinds of what a VM's Firecracker writes, in the order they are read:
// its output first, as it comes first (before the logger is configured).
const (
	srcOut = iota
	srcLog
	srcMetrics
)

// followers are the VMs whose output is being read, by VM directory,
// across drivers: a process reads a VM's pipes once, or they would share
// its bytes (and two writers its kept log).
var followers = struct {
	sync.Mutex
	m map[string]*follower
}{m: map[string]*follower{}}

// follower reads one VM's pipes (or, for a VM an older hearth started, its
// files) until the VM's process exits.
type follower struct {
	vm   string
	log  *slog.Logger
	srcs []*source
	kept *consolelog.Writer // nil for an older hearth's VM

	mu     sync.Mutex // one read at a time; guards everything below
	closed bool
	buf    []byte
	bucket tokenbucket.Bucket // lines into hearth's log
	// left is how many lines were left out of hearth's log since the
	// last summary, which was at summarized; skipped how many bytes of an
	// older hearth's files were not read.
	left, skipped int64
	summarized    time.Time

	quit chan struct{} // abandon: the daemon goes away, the pipes keep what they hold
	done chan struct{}
}

// source is one pipe (or file) of a VM.
type source struct {
	kind int
	fd   int   // a pipe, read non-blocking; -1 for a file
	file *tail // a file an older hearth had Firecracker write
	// line is an unfinished line; cut, that it was too long and the
	// rest of it is being skipped.
	line []byte
	cut  bool
}

// keptLogDir is where a VM's Firecracker log and output are kept.
func keptLogDir(h vmm.Handle) string { return filepath.Join(h.Dir, dirKeptLog) }

// vmRoot is the directory Firecracker works in: the VM's, or its jail's.
func vmRoot(h vmm.Handle) string {
	if h.Jail != "" {
		return h.Jail
	}
	return h.Dir
}

// newFollower opens what h's Firecracker writes: the pipes this hearth
// makes, or the files an older one had it write (followed from their
// current end: the older daemon forwarded what was before). It returns
// nil when there is neither.
func (d *Driver) newFollower(h vmm.Handle) (*follower, error) {
	root := vmRoot(h)
	f := &follower{vm: filepath.Base(h.Dir), log: d.log, buf: make([]byte, readPerTick),
		bucket: tokenbucket.New(float64(d.cfg.LogRate), float64(d.cfg.LogBurst)),
		quit:   make(chan struct{}), done: make(chan struct{})}
	if fi, err := os.Stat(filepath.Join(root, fileLogFIFO)); err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
		for _, p := range []struct {
			kind int
			name string
		}{{srcOut, fileOutFIFO}, {srcLog, fileLogFIFO}, {srcMetrics, fileMetricsFIFO}} {
			fd, err := openPipe(filepath.Join(root, p.name))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				f.close()
				return nil, err
			}
			f.srcs = append(f.srcs, &source{kind: p.kind, fd: fd})
		}
		kept, err := consolelog.Open(keptLogDir(h), d.keptLimits())
		if err != nil {
			f.close()
			return nil, err
		}
		f.kept = kept
		return f, nil
	}
	for _, p := range []struct {
		kind int
		name string
	}{{srcLog, fileLog}, {srcOut, fileOut}, {srcMetrics, fileMetrics}} {
		path := filepath.Join(root, p.name)
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
			f.srcs = append(f.srcs, &source{kind: p.kind, fd: -1, file: newTail(path, fi.Size())})
		}
	}
	if len(f.srcs) == 0 {
		return nil, nil
	}
	return f, nil
}

// keptLimits bound a VM's kept log: an eighth of it holds the first lines
// (the start, the configuration), the rest the latest.
func (d *Driver) keptLimits() consolelog.Limits {
	return consolelog.Limits{Max: d.cfg.LogMaxSize, Head: d.cfg.LogMaxSize / 8}
}

// openPipe opens a FIFO read-write and non-blocking: the open needs no
// writer, a read of an empty pipe returns at once, and while it is open
// the pipe keeps what is written into it.
func openPipe(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// follow reads h's output until exited is closed (then drains it once
// more, for the last lines). A VM is followed once however often it is
// watched.
func (d *Driver) follow(h vmm.Handle, exited <-chan struct{}) {
	followers.Lock()
	defer followers.Unlock()
	if _, ok := followers.m[h.Dir]; ok {
		return
	}
	f, err := d.newFollower(h)
	if err != nil {
		d.log.Warn("cannot read firecracker's log", "vm", filepath.Base(h.Dir), "err", err)
		return
	}
	if f == nil {
		return
	}
	followers.m[h.Dir] = f
	go f.run(h.Dir, exited)
}

// followerOf returns the follower of the VM in dir, if any.
func followerOf(dir string) *follower {
	followers.Lock()
	defer followers.Unlock()
	return followers.m[dir]
}

// awaitFollower waits up to wait for the follower of the VM in dir, if
// any, to finish; one that does not is abandoned.
func awaitFollower(dir string, wait time.Duration) {
	f := followerOf(dir)
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-time.After(wait):
		f.abandon()
	}
}

func (f *follower) run(dir string, exited <-chan struct{}) {
	defer func() {
		followers.Lock()
		if followers.m[dir] == f {
			delete(followers.m, dir)
		}
		followers.Unlock()
		close(f.done)
	}()
	t := time.NewTicker(followInterval)
	defer t.Stop()
	for {
		select {
		case <-f.quit:
			f.close()
			return
		case <-exited:
			f.read(drainMax)
			f.summarize(true)
			f.close()
			return
		case <-t.C:
			f.read(readPerTick)
			f.summarize(false)
		}
	}
}

// abandon ends following without reading what is left.
func (f *follower) abandon() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.quit:
	default:
		close(f.quit)
	}
}

// sync reads what the pipes hold now (after the process ended, all it
// wrote), so the kept log has it.
func (f *follower) sync() { f.read(drainMax) }

func (f *follower) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	for _, s := range f.srcs {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
	}
	if f.kept != nil {
		f.kept.Close()
	}
}

// read reads up to budget bytes from each source.
func (f *follower) read(budget int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	for _, s := range f.srcs {
		for left := budget; left > 0; {
			var n int
			var err error
			if s.fd >= 0 {
				n, err = unix.Read(s.fd, f.buf[:min(left, len(f.buf))])
				if errors.Is(err, unix.EINTR) {
					continue
				}
			} else {
				var skipped int64
				n, skipped, err = s.file.read(f.buf[:min(left, len(f.buf))])
				if skipped > 0 {
					f.skipped += skipped
					s.line, s.cut = s.line[:0], true // the rest of a line skipped into
				}
			}
			if n <= 0 || err != nil {
				break // empty (EAGAIN), or gone
			}
			left -= n
			f.take(s, f.buf[:n])
		}
		if s.file != nil {
			s.file.free()
		}
	}
}

// take splits what was read from s into lines.
func (f *follower) take(s *source, b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		if !s.cut {
			limit := maxLogLine
			if s.kind == srcMetrics {
				limit = maxMetricsLine
			}
			if room := limit - len(s.line); len(chunk) > room {
				s.line = append(s.line, chunk[:room]...)
				s.cut = true
			} else {
				s.line = append(s.line, chunk...)
			}
		}
		if i < 0 {
			return
		}
		f.line(s.kind, bytes.TrimSpace(s.line))
		s.line, s.cut = s.line[:0], false
		b = b[i+1:]
	}
}

// line keeps one line and offers it to hearth's log.
func (f *follower) line(kind int, line []byte) {
	if len(line) == 0 {
		return
	}
	if kind == srcMetrics {
		if !json.Valid(line) || !f.log.Enabled(context.Background(), slog.LevelDebug) {
			return
		}
		if f.forward() {
			f.log.Debug("firecracker metrics", "vm", f.vm, "metrics", json.RawMessage(line))
		}
		return
	}
	if f.kept != nil {
		// A full disk loses the line from the kept log only.
		_, _ = f.kept.Write(append(line, '\n'))
	}
	if f.forward() {
		f.log.Info("firecracker", "vm", f.vm, "line", string(line))
	}
}

// forward says whether a line may go into hearth's log now, counting it
// as left out if not.
func (f *follower) forward() bool {
	if f.bucket.Take(time.Now(), 1) {
		return true
	}
	f.left++
	return false
}

// summarize says how many lines were left out of hearth's log, at most
// once per summaryEvery, or now if last.
func (f *follower) summarize(last bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.summarized.IsZero() {
		f.summarized = now
	}
	if f.left == 0 && f.skipped == 0 || !last && now.Sub(f.summarized) < summaryEvery {
		return
	}
	attrs := []any{"vm", f.vm, "lines", f.left, "since", f.summarized.UTC().Format(time.RFC3339), "rate", f.bucket.Rate()}
	if f.skipped > 0 {
		attrs = append(attrs, "bytes_unread", f.skipped)
	}
	f.log.Warn("firecracker log lines left out of hearth's log", attrs...)
	f.left, f.skipped, f.summarized = 0, 0, now
}

// tail reads what is appended to a file, and frees what it has read.
type tail struct {
	path  string
	off   int64
	freed int64
}

func newTail(path string, from int64) *tail { return &tail{path: path, off: from} }

// read reads what follows the last read, first skipping to near the end
// if that is more than legacySkip away (it returns how much it skipped).
func (t *tail) read(p []byte) (n int, skipped int64, err error) {
	f, err := os.Open(t.path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		if fi.Size() < t.off {
			t.off, t.freed = 0, 0 // truncated or replaced
		}
		if fi.Size()-t.off > legacySkip {
			skipped = fi.Size() - legacyKeep - t.off
			t.off += skipped
		}
	}
	n, err = f.ReadAt(p, t.off)
	t.off += int64(n)
	if err == io.EOF {
		err = nil
	}
	return n, skipped, err
}

// free gives back the disk blocks of what was read, but the last
// legacyKeep bytes (ExitReason reads them): Firecracker writes the file
// for its whole life, and only the daemon can bound it. A file system that
// cannot punch holes keeps it all.
func (t *tail) free() {
	upto := (t.off - legacyKeep) &^ (4<<10 - 1)
	if upto <= t.freed {
		return
	}
	f, err := os.OpenFile(t.path, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, upto); err == nil {
		t.freed = upto
	}
}

// maxExitReason bounds ExitReason's answer.
const maxExitReason = 300

// ExitReason implements vmm.ExitExplainer: the last error and exit lines
// Firecracker wrote to its log or printed, e.g. a KVM error, or
// "exit_code=0" after the guest rebooted.
func (d *Driver) ExitReason(h vmm.Handle) string {
	if f := followerOf(h.Dir); f != nil {
		f.sync()
	}
	lines, err := keptLines(h, 16<<10)
	if err != nil || lines == nil {
		// A VM an older hearth started: its log, or failing that its
		// output.
		for _, name := range []string{fileLog, fileOut} {
			if lines = lastLines(filepath.Join(vmRoot(h), name), 16<<10); len(pick(lines)) > 0 {
				break
			}
		}
	}
	picked := pick(lines)
	if len(picked) > 2 {
		picked = picked[len(picked)-2:]
	}
	why := strings.Join(picked, " | ")
	if why == "" {
		return ""
	}
	if len(why) > maxExitReason {
		why = "…" + why[len(why)-maxExitReason:]
	}
	return "firecracker: " + why
}

// pick returns the lines that say why a process ended.
func pick(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, "rror") || strings.Contains(l, "exit_code") || strings.Contains(l, "panic") {
			out = append(out, l)
		}
	}
	return out
}

// outputTail returns ": " and the last lines Firecracker wrote to its log
// or printed, if any, for an error about a process that just ended.
func (d *Driver) outputTail(h vmm.Handle) string {
	if f := followerOf(h.Dir); f != nil {
		f.sync()
	}
	lines, _ := keptLines(h, 4<<10)
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if len(lines) == 0 {
		return ""
	}
	return " (firecracker said: " + strings.Join(lines, " | ") + ")"
}

// keptLines returns the lines in about the last n bytes of h's kept log.
func keptLines(h vmm.Handle, n int64) ([]string, error) {
	b, err := consolelog.TailLines(keptLogDir(h), n)
	if err != nil {
		return nil, err
	}
	return splitLines(b), nil
}

// splitLines returns the non-empty lines of b.
func splitLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// lastLines returns the non-empty lines in about the last n bytes of a
// file an older hearth had Firecracker write (consolelog reads a plain
// file as a log that is all head).
func lastLines(path string, n int64) []string {
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	b, err := consolelog.TailLines(path, n)
	if err != nil {
		return nil
	}
	return splitLines(b)
}
