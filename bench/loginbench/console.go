package main

import (
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Lines the guest agent logs (to the journal, which forwards them to the
// serial console) that mark where a boot and a login are.
const (
	markAgentStart = "hearth-agent starting"
	markLogin      = "login starting"
)

// consoleWatch records, in host time, when output first appears on a VM's
// serial console: QEMU writes it to a file in the VM's directory as the
// guest prints it, and the bench reads that file every few milliseconds.
type consoleWatch struct {
	mu    sync.Mutex
	first time.Time            // the first byte
	marks map[string]time.Time // marker → when a line holding it appeared
}

const consolePoll = 5 * time.Millisecond

// watchConsole follows the console file at path (which QEMU creates)
// until ctx ends, looking for markers.
func watchConsole(ctx context.Context, path string, markers ...string) *consoleWatch {
	w := &consoleWatch{marks: map[string]time.Time{}}
	go func() {
		var f *os.File
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
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
			if f == nil {
				var err error
				if f, err = os.Open(path); err != nil {
					continue
				}
			}
			for {
				n, err := f.Read(buf)
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
				if err == io.EOF || n == 0 || err != nil {
					break
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
