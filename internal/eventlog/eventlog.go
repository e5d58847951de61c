// Package eventlog keeps the event log bounded: a Pruner forgets events
// older than a maximum age or beyond a maximum count, periodically and off
// the request path, in batches of one short transaction each, so writers
// never wait for more than one batch, and after each full batch it pauses
// as long as the batch took, so a large backlog (a first run on an old
// log) holds the write lock at most half the time. The store only ever
// forgets the oldest events (store.Events); streams tell clients that
// resume from before what was forgotten (internal/api).
package eventlog

import (
	"context"
	"log/slog"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// Config says which events go and how.
type Config struct {
	// MaxAge: events older than this go (0: no age limit). MaxRows: at most
	// this many of the newest are kept (0: no row limit).
	MaxAge  time.Duration
	MaxRows int
	// Interval between passes; Batch bounds each transaction.
	Interval time.Duration
	Batch    int
}

// Store is what the pruner needs of the store.
type Store interface {
	PruneEvents(ctx context.Context, r store.EventRetention) (int, error)
}

// Pruner forgets old events.
type Pruner struct {
	cfg Config
	st  Store
	log *slog.Logger
	now func() time.Time
}

// New returns a pruner; now is time.Now if nil.
func New(cfg Config, st Store, log *slog.Logger, now func() time.Time) *Pruner {
	if now == nil {
		now = time.Now
	}
	return &Pruner{cfg: cfg, st: st, log: log, now: now}
}

// Run prunes at once and then every Interval until ctx ends. A failed pass
// is logged and tried again at the next.
func (p *Pruner) Run(ctx context.Context) {
	if p.cfg.MaxAge <= 0 && p.cfg.MaxRows <= 0 {
		return // nothing to forget, ever
	}
	tick := time.NewTicker(p.cfg.Interval)
	defer tick.Stop()
	for {
		start := time.Now()
		n, err := p.Prune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.Warn("event retention", "removed", n, "err", err)
		case n > 0:
			p.log.Info("event retention", "removed", n, "duration_ms", time.Since(start).Milliseconds())
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Prune runs one pass: batches until one removes fewer than Batch, each
// full one followed by a pause as long as it took. It returns how many
// events it removed.
func (p *Pruner) Prune(ctx context.Context) (int, error) {
	r := store.EventRetention{KeepRows: p.cfg.MaxRows, Batch: p.cfg.Batch}
	if p.cfg.MaxAge > 0 {
		r.Before = p.now().Add(-p.cfg.MaxAge)
	}
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		start := time.Now()
		n, err := p.st.PruneEvents(ctx, r)
		total += n
		if err != nil {
			return total, err
		}
		if n < r.Batch {
			return total, nil
		}
		pause := time.NewTimer(time.Since(start))
		select {
		case <-ctx.Done():
			pause.Stop()
			return total, ctx.Err()
		case <-pause.C:
		}
	}
}
