package app

import (
	"log/slog"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/eventlog"
	"github.com/hearth-project/hearth/internal/store"
)

// newPruner builds the event log's retention from the configuration.
func newPruner(cfg config.Config, st store.Store, log *slog.Logger) *eventlog.Pruner {
	e := cfg.Events
	return eventlog.New(eventlog.Config{MaxAge: e.MaxAge.Duration, MaxRows: e.MaxRows,
		Interval: e.PruneInterval.Duration, Batch: e.PruneBatch}, st, log.With("component", "eventlog"), nil)
}
