//go:build race

package api_test

// raceEnabled: the race detector slows SQLite (compiled from C to Go)
// some fifty times, so the large-log test uses a smaller log under it.
const raceEnabled = true
