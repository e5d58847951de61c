package fctest

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Log levels, in Firecracker's order.
const (
	levelOff = iota
	levelError
	levelWarn
	levelInfo
	levelDebug
	levelTrace
)

var levelNames = map[string]int{"off": levelOff, "error": levelError, "warning": levelWarn, "info": levelInfo, "debug": levelDebug, "trace": levelTrace}

var levelTags = [...]string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}

// fcLogger writes Firecracker-style log lines:
//
//	2006-01-02T15:04:05.000000000 [instance-id:thread(:LEVEL)(:origin)] message
//
// to the process's stdout until PUT /logger names a log_path. Before that
// only warnings and errors (and the unrestricted start line) are written,
// as Firecracker's default level is Warning; PUT /logger defaults to Info.
// Like Firecracker's, it writes each line with one write_all to a
// non-blocking descriptor: a line a full pipe cannot take (or takes only
// in part) is lost and counted (METRICS.logger.missed_log_count), and the
// writer never waits.
type fcLogger struct {
	mu         sync.Mutex
	id         string
	out        io.Writer
	file       *dropWriter
	level      int
	showLevel  bool
	showOrigin bool
	missed     int64
}

func newLogger(id string, stdout io.Writer) *fcLogger {
	return &fcLogger{id: id, out: stdout, level: levelWarn}
}

// configure applies PUT /logger (or the command line's logger flags).
func (l *fcLogger) configure(c Logger) error {
	level := levelInfo
	if c.Level != "" {
		lv, ok := levelNames[strings.ToLower(c.Level)]
		if !ok {
			return fmt.Errorf("invalid log level %q", c.Level)
		}
		level = lv
	}
	var f *dropWriter
	if c.LogPath != "" {
		var err error
		if f, err = openDropFile(c.LogPath); err != nil {
			return fmt.Errorf("cannot open the log file: %w", err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if f != nil {
		if l.file != nil {
			l.file.Close()
		}
		l.file, l.out = f, f
	}
	l.level, l.showLevel, l.showOrigin = level, c.ShowLevel, c.ShowLogOrigin
	return nil
}

func (l *fcLogger) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
		l.out = io.Discard
	}
}

// write writes one line if its level is enabled (or it is unrestricted),
// and reports whether the line went out whole.
func (l *fcLogger) write(level int, thread, msg string, unrestricted bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !unrestricted && level > l.level {
		return false
	}
	tag := []string{l.id, thread}
	if l.showLevel {
		tag = append(tag, levelTags[level])
	}
	if l.showOrigin {
		tag = append(tag, "fctest/fake.go:0")
	}
	line := fmt.Sprintf("%s [%s] %s\n", time.Now().Format("2006-01-02T15:04:05.000000000"), strings.Join(tag, ":"), msg)
	var err error
	if w, ok := l.out.(*dropWriter); ok {
		if w.writeAll([]byte(line)) > 0 {
			err = io.ErrShortWrite
		}
	} else {
		_, err = io.WriteString(l.out, line)
	}
	if err != nil {
		l.missed++
		return false
	}
	return true
}

// missedLines is how many lines were lost (missed_log_count).
func (l *fcLogger) missedLines() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.missed
}

// Unrestricted writes a line whatever the level (Firecracker's start and
// exit lines).
func (l *fcLogger) Unrestricted(msg string) { l.write(levelInfo, "main", msg, true) }

func (l *fcLogger) infof(format string, args ...any) {
	l.write(levelInfo, "fc_api", fmt.Sprintf(format, args...), false)
}

func (l *fcLogger) errorf(format string, args ...any) {
	l.write(levelError, "fc_api", fmt.Sprintf(format, args...), false)
}
