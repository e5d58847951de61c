package api

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/hearth-project/hearth/internal/auth"
)

// streamSlots counts the streams open per principal (see principal):
// event streams and console follows, which hold a connection and read the
// store for as long as they run.
type streamSlots struct {
	mu   sync.Mutex
	open map[string]int
}

// principal is whom a stream counts against: a user key's user (all its
// keys together), or an admin key itself.
func principal(id auth.Identity) (key, name string) {
	if id.Admin() {
		return "key:" + id.KeyID, "API key " + id.KeyID
	}
	return "user:" + id.UserID, "user " + id.UserID
}

// openStream takes one of the caller's stream slots, or answers 429 when
// they are all taken. release gives the slot back.
func (s *Server) openStream(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	max := s.MaxStreams
	if max <= 0 {
		return func() {}, true
	}
	key, name := principal(identity(r))
	sl := s.streams
	sl.mu.Lock()
	if sl.open[key] >= max {
		sl.mu.Unlock()
		writeError(w, http.StatusTooManyRequests, "too_many_streams",
			fmt.Sprintf("%s already has %d streams open (event streams and console follows), the most allowed (events.max_streams_per_user); close one first", name, max))
		return nil, false
	}
	sl.open[key]++
	sl.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			sl.mu.Lock()
			defer sl.mu.Unlock()
			if sl.open[key]--; sl.open[key] <= 0 {
				delete(sl.open, key)
			}
		})
	}, true
}
