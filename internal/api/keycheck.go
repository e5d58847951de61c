package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/hearth-project/hearth/internal/auth"
)

// keyCheckEvery is how often a long stream (an event stream, a console
// follow) reads its API key's record again: a key revoked or expired
// while it streams ends the stream within this, as it refuses the key's
// next request at once.
const keyCheckEvery = 10 * time.Second

// keyGone reports whether the API key r was authenticated with has since
// been revoked, has expired or is gone. A store that cannot answer now
// says nothing: the next look decides.
func (s *Server) keyGone(ctx context.Context, r *http.Request) bool {
	id := identity(r)
	return id.KeyID != "" && errors.Is(s.Verifier.Check(ctx, id.KeyID), auth.ErrUnauthenticated)
}
