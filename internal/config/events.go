package config

import "time"

// EventsConfig bounds the event log and its streams (GET /v1/events,
// GET /v1/logins/{id}/events).
type EventsConfig struct {
	// MaxAge: events older than this are forgotten ("0s": kept whatever
	// their age). MaxRows: at most this many of the newest are kept (0:
	// no row limit). Either limit alone forgets an event.
	MaxAge  Duration `toml:"max_age"`
	MaxRows int      `toml:"max_rows"`
	// PruneInterval is how often retention runs; PruneBatch bounds the
	// events one of its transactions removes, so writers wait at most one
	// batch.
	PruneInterval Duration `toml:"prune_interval"`
	PruneBatch    int      `toml:"prune_batch"`
	// MaxStreamsPerUser bounds the event streams, console follows,
	// process output streams and file watches one user (all its user
	// keys together) or one admin key has open at once; more are a 429.
	MaxStreamsPerUser int `toml:"max_streams_per_user"`
}

func defaultEvents() EventsConfig {
	return EventsConfig{
		MaxAge:            Duration{30 * 24 * time.Hour},
		MaxRows:           1_000_000,
		PruneInterval:     Duration{time.Minute},
		PruneBatch:        250,
		MaxStreamsPerUser: 16,
	}
}

func (e EventsConfig) validate(bad func(field, format string, args ...any)) {
	if e.MaxAge.Duration < 0 {
		bad("events.max_age", "must not be negative (\"0s\": no age limit), got %s", e.MaxAge.Duration)
	} else if e.MaxAge.Duration > 0 && e.MaxAge.Duration < time.Minute {
		bad("events.max_age", "must be at least 1m (or \"0s\": no age limit), got %s", e.MaxAge.Duration)
	}
	if e.MaxRows < 0 {
		bad("events.max_rows", "must not be negative (0: no row limit), got %d", e.MaxRows)
	} else if e.MaxRows > 0 && e.MaxRows < 1000 {
		bad("events.max_rows", "must be at least 1000 (or 0: no row limit), got %d", e.MaxRows)
	}
	if e.PruneInterval.Duration < time.Second {
		bad("events.prune_interval", "must be at least 1s, got %s", e.PruneInterval.Duration)
	}
	if e.PruneBatch < 1 || e.PruneBatch > 100_000 {
		bad("events.prune_batch", "must be 1-100000, got %d", e.PruneBatch)
	}
	if e.MaxStreamsPerUser < 1 {
		bad("events.max_streams_per_user", "must be at least 1, got %d", e.MaxStreamsPerUser)
	}
}
