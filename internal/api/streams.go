package api

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/hearth-project/hearth/internal/auth"
)

// streamSlots counts the streams open per principal (see principal):
// event streams and console follows, which hold a connection and read the
// store for as long as they run, and process output streams and file
// watches, which hold a connection and a stream to a guest agent; and it
// paces the store reads of the former.
type streamSlots struct {
	mu   sync.Mutex
	open map[string]int
	// reads holds, per principal with a stream open, a semaphore of
	// storeReadsPerPrincipal.
	reads map[string]chan struct{}
}

// storeReadsPerPrincipal is how many of one principal's streams read the
// store at once. An event of theirs wakes every one of their streams
// together; paced, they queue among themselves instead of taking every
// store connection from other users' requests.
const storeReadsPerPrincipal = 2

// principal is whom a stream counts against: a user key's user (all its
// keys together), or an admin key itself.
func principal(id auth.Identity) (key, name string) {
	if id.Admin() {
		return "key:" + id.KeyID, "API key " + id.KeyID
	}
	return "user:" + id.UserID, "user " + id.UserID
}

// openStream takes one of the caller's stream slots, or answers 429 when
// they are all taken. release gives the slot back; reads paces the
// stream's store reads (send to take a turn, receive to give it back).
func (s *Server) openStream(w http.ResponseWriter, r *http.Request) (release func(), reads chan struct{}, ok bool) {
	limit := s.MaxStreams
	key, name := principal(identity(r))
	sl := s.streams
	sl.mu.Lock()
	if limit > 0 && sl.open[key] >= limit {
		sl.mu.Unlock()
		writeError(w, http.StatusTooManyRequests, "too_many_streams",
			fmt.Sprintf("%s already has %d streams open (event streams, console follows, process output streams and file watches), the most allowed (events.max_streams_per_user); close one first", name, limit))
		return nil, nil, false
	}
	sl.open[key]++
	reads = sl.reads[key]
	if reads == nil {
		reads = make(chan struct{}, storeReadsPerPrincipal)
		sl.reads[key] = reads
	}
	sl.mu.Unlock()
	return func() {
		sl.mu.Lock()
		defer sl.mu.Unlock()
		if sl.open[key]--; sl.open[key] <= 0 {
			delete(sl.open, key)
			delete(sl.reads, key)
		}
	}, reads, true
}
