package api

import "time"

// SetSSEKeepalive sets how often idle event streams send a comment, for
// tests; it returns a func that restores it.
func SetSSEKeepalive(d time.Duration) func() {
	old := sseKeepalive
	sseKeepalive = d
	return func() { sseKeepalive = old }
}

// StoreReadsPerPrincipal is storeReadsPerPrincipal, for tests.
const StoreReadsPerPrincipal = storeReadsPerPrincipal
