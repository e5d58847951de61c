package main

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
)

// Lines the guest agent logs (to the journal, which forwards them to the
// serial console) that mark where a boot and a login are.
const (
	markAgentStart = "hearth-agent starting"
	markLogin      = "login starting"
)

// consoleWatch records, in host time, when output first appears on a VM's
// serial console: the daemon records it into the VM's console log as the
// guest prints it (internal/consolelog), and the bench reads that log every
// few milliseconds.
type consoleWatch struct {
	mu    sync.Mutex
	first time.Time            // the first byte
	marks map[string]time.Time // marker → when a line holding it appeared
}

const consolePoll = 5 * time.Millisecond

// watchConsole follows the console log in dir (which the daemon creates)
// until ctx ends, looking for markers.
func watchConsole(ctx context.Context, dir string, markers ...string) *consoleWatch {
	w := &consoleWatch{marks: map[string]time.Time{}}
	go func() {
		r := consolelog.NewReader(dir, 0)
		var text strings.Builder
		buf := make([]byte, 64<<10)
		tick := time.NewTicker(consolePoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for {
				n, err := r.Read(buf)
				if n > 0 {
					now := time.Now()
					text.Write(buf[:n])
					all := text.String()
					w.mu.Lock()
					if w.first.IsZero() {
						w.first = now
					}
					for _, m := range markers {
						if _, seen := w.marks[m]; !seen && strings.Contains(all, m) {
							w.marks[m] = now
						}
					}
					w.mu.Unlock()
				}
				if n == 0 || err != nil {
					break // caught up, or not there yet
				}
			}
		}
	}()
	return w
}

// at returns when marker appeared (or the first byte for ""), and whether
// it did.
func (w *consoleWatch) at(marker string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if marker == "" {
		return w.first, !w.first.IsZero()
	}
	t, ok := w.marks[marker]
	return t, ok
}
