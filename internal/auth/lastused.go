package auth

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// Verifier checks keys against the store and records when each key was
// last used.
//
// The recording never delays a request: Verify only notes the use in
// memory, and one goroutine (started when there is something to write,
// gone when there is not) writes the notes to the store. A key's use is
// noted at most once per minute; uses of a key not yet written are
// coalesced into its latest; at most MaxPending keys wait, and a use that
// finds the queue full is dropped instead of waiting. A locked or slow
// database therefore costs last-used accuracy, never request latency.
//
// The zero value (with Keys set) is ready to use. Close waits for the
// queued writes.
type Verifier struct {
	Keys store.APIKeys
	// Now is the clock expiry is checked against (default time.Now).
	Now func() time.Time
	// MaxPending bounds the keys whose use waits to be written (default
	// 1024).
	MaxPending int
	// Log, if set, reports (at most once a minute) uses that could not be
	// written.
	Log *slog.Logger

	mu       sync.Mutex
	noted    map[string]time.Time // when each key's use was last queued
	pending  map[string]time.Time // uses waiting to be written: key id → time
	writing  bool                 // a writer goroutine runs
	closed   bool
	wg       sync.WaitGroup
	stats    UseStats
	lastWarn time.Time
	warned   uint64    // stats.Dropped when the last warning was logged
	pruned   time.Time // when noted was last rid of keys not used lately
}

// UseStats counts what became of recorded uses.
type UseStats struct {
	Written uint64 // uses written to the store
	Dropped uint64 // uses not queued because the queue was full
	Failed  uint64 // writes the store refused or did not finish in time
}

const (
	// touchEvery is how often one key's use is written at most.
	touchEvery = time.Minute
	// defaultMaxPending bounds the write queue unless MaxPending says.
	defaultMaxPending = 1024
	// touchTimeout bounds one write.
	touchTimeout = 10 * time.Second
)

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// recordUse notes that key id was used at t, without blocking.
func (v *Verifier) recordUse(id string, t time.Time) {
	t = t.UTC()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	if last, seen := v.noted[id]; seen && t.Sub(last) < touchEvery {
		return
	}
	max := v.MaxPending
	if max <= 0 {
		max = defaultMaxPending
	}
	if _, queued := v.pending[id]; !queued && len(v.pending) >= max {
		v.stats.Dropped++
		return
	}
	if v.noted == nil {
		v.noted = map[string]time.Time{}
	}
	// Forget keys not used lately, at most once a minute: the scan is on
	// the request path, and when every noted key was used within the
	// minute it would find nothing to forget.
	if len(v.noted) >= 4*max && t.Sub(v.pruned) >= touchEvery {
		v.pruned = t
		for k, last := range v.noted {
			if t.Sub(last) >= touchEvery {
				delete(v.noted, k)
			}
		}
	}
	v.noted[id] = t
	if v.pending == nil {
		v.pending = map[string]time.Time{}
	}
	v.pending[id] = t
	if !v.writing {
		v.writing = true
		v.wg.Add(1)
		go v.write()
	}
}

// write stores queued uses until none are left.
func (v *Verifier) write() {
	defer v.wg.Done()
	for {
		v.mu.Lock()
		batch := v.pending
		v.pending = nil
		if len(batch) == 0 {
			v.writing = false
			v.mu.Unlock()
			return
		}
		v.mu.Unlock()
		var written, failed uint64
		var lastErr error
		for id, at := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), touchTimeout)
			err := v.Keys.TouchAPIKey(ctx, id, at)
			cancel()
			if err != nil {
				failed++
				lastErr = err
				v.mu.Lock()
				delete(v.noted, id) // let the next use try again
				v.mu.Unlock()
				continue
			}
			written++
		}
		v.mu.Lock()
		v.stats.Written += written
		v.stats.Failed += failed
		// Warn of failures, and of uses dropped since the last warning.
		warn := v.Log != nil && (failed > 0 || v.stats.Dropped > v.warned) && time.Since(v.lastWarn) >= touchEvery
		if warn {
			v.lastWarn, v.warned = time.Now(), v.stats.Dropped
		}
		stats := v.stats
		v.mu.Unlock()
		if warn {
			v.Log.Warn("api key last-used times not recorded", "failed", stats.Failed, "dropped", stats.Dropped, "err", lastErr)
		}
	}
}

// Stats returns how many uses were written, dropped and failed so far.
func (v *Verifier) Stats() UseStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stats
}

// Close stops recording uses and waits, until ctx ends, for the queued
// ones to be written. Verify keeps working afterwards.
func (v *Verifier) Close(ctx context.Context) error {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	done := make(chan struct{})
	go func() {
		v.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
