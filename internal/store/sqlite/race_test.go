//go:build race

package sqlite

// raceEnabled: the race detector slows SQLite (compiled from C to Go)
// some fifty times, so the large-log tests use a smaller log under it.
const raceEnabled = true
