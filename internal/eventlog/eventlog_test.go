package eventlog_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/eventlog"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// countingStore counts PruneEvents calls and the most one removed.
type countingStore struct {
	store.Store
	mu       sync.Mutex
	calls    int
	maxBatch int
}

func (c *countingStore) PruneEvents(ctx context.Context, r store.EventRetention) (int, error) {
	n, err := c.Store.PruneEvents(ctx, r)
	c.mu.Lock()
	c.calls++
	c.maxBatch = max(c.maxBatch, n)
	c.mu.Unlock()
	return n, err
}

func open(t *testing.T) *sqlite.DB {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "hearth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func appendAt(t *testing.T, st store.Store, at time.Time, n int) []store.Event {
	t.Helper()
	var out []store.Event
	for range n {
		e, err := st.AppendEvent(t.Context(), store.Event{At: at, Type: "test", UserID: "u"})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// TestPruneInBatches: a pass forgets every event older than the maximum
// age, never more than a batch per transaction, and nothing newer.
func TestPruneInBatches(t *testing.T) {
	st := open(t)
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	old := appendAt(t, st, now.Add(-48*time.Hour), 250)
	fresh := appendAt(t, st, now.Add(-time.Hour), 7)
	cs := &countingStore{Store: st}
	p := eventlog.New(eventlog.Config{MaxAge: 24 * time.Hour, Interval: time.Minute, Batch: 100}, cs, slog.New(slog.DiscardHandler),
		func() time.Time { return now })
	n, err := p.Prune(t.Context())
	if err != nil || n != len(old) {
		t.Fatalf("pruned %d (%v), want %d", n, err, len(old))
	}
	if cs.calls != 3 || cs.maxBatch != 100 {
		t.Fatalf("%d transactions, the largest removing %d; want 3 of at most 100", cs.calls, cs.maxBatch)
	}
	left, err := st.ListEvents(t.Context(), 0, 0)
	if err != nil || len(left) != len(fresh) || left[0].ID != fresh[0].ID {
		t.Fatalf("left %d events (%v), want the %d fresh ones", len(left), err, len(fresh))
	}
	if h, err := st.EventHorizon(t.Context()); err != nil || h != old[len(old)-1].ID {
		t.Fatalf("horizon %d (%v), want %d", h, err, old[len(old)-1].ID)
	}
	// Row limit: the newest 3 stay.
	p = eventlog.New(eventlog.Config{MaxRows: 3, Interval: time.Minute, Batch: 100}, st, slog.New(slog.DiscardHandler), nil)
	if n, err := p.Prune(t.Context()); err != nil || n != 4 {
		t.Fatalf("row limit pruned %d (%v), want 4", n, err)
	}
}

// TestRunPrunesPeriodically: events that grow old while the daemon runs
// are forgotten by a later pass, and Run ends with its context.
func TestRunPrunesPeriodically(t *testing.T) {
	st := open(t)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	first := appendAt(t, st, time.Now(), 5)
	p := eventlog.New(eventlog.Config{MaxAge: time.Hour, Interval: 20 * time.Millisecond, Batch: 2}, st, slog.New(slog.DiscardHandler), clock)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()

	mu.Lock()
	now = now.Add(2 * time.Hour) // the first events are old now
	mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h, err := st.EventHorizon(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if h == first[len(first)-1].ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("horizon %d after 30s, want %d", h, first[len(first)-1].ID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not end with its context")
	}
}

// slowStore takes d for every PruneEvents and removes a full batch the
// first full times.
type slowStore struct {
	d     time.Duration
	full  int
	calls int
}

func (s *slowStore) PruneEvents(ctx context.Context, r store.EventRetention) (int, error) {
	time.Sleep(s.d)
	s.calls++
	if s.calls <= s.full {
		return r.Batch, nil
	}
	return 0, nil
}

// TestPrunePausesAfterFullBatches: after each full batch a pass waits as
// long as the batch took, so draining a backlog holds the write lock at
// most about half the time.
func TestPrunePausesAfterFullBatches(t *testing.T) {
	const batchTook = 50 * time.Millisecond
	s := &slowStore{d: batchTook, full: 3}
	p := eventlog.New(eventlog.Config{MaxRows: 1, Interval: time.Minute, Batch: 10}, s, slog.New(slog.DiscardHandler), nil)
	start := time.Now()
	n, err := p.Prune(t.Context())
	took := time.Since(start)
	if err != nil || n != 30 || s.calls != 4 {
		t.Fatalf("pruned %d (%v) in %d calls; want 30 in 4", n, err, s.calls)
	}
	// Four batches and three pauses, each at least as long as a batch.
	if want := 7 * batchTook; took < want {
		t.Fatalf("the pass took %v; with a pause after each full batch it takes at least %v", took, want)
	}

	// A pass cut off during a pause ends at once.
	s = &slowStore{d: batchTook, full: 100}
	p = eventlog.New(eventlog.Config{MaxRows: 1, Interval: time.Minute, Batch: 10}, s, slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 3*batchTook/2) // during the first pause
	defer cancel()
	start = time.Now()
	if _, err := p.Prune(ctx); err == nil {
		t.Fatal("a cancelled pass returned no error")
	}
	if took := time.Since(start); took > 10*batchTook {
		t.Fatalf("a pass cancelled during its pause took %v to end", took)
	}
}
