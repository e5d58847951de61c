package app

import (
	"context"
	"time"

	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// CreateAPIKeyLocal issues a key straight into this host's database and
// returns it: how the first admin key is made, with no daemon running and
// no key to ask one with. A running daemon accepts the key from its next
// request on.
func CreateAPIKeyLocal(ctx context.Context, cfg config.Config, req auth.IssueRequest) (string, error) {
	if err := cfg.EnsureDirs(); err != nil {
		return "", err
	}
	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return "", err
	}
	defer st.Close()
	key, _, err := auth.Issue(ctx, st, req, time.Now())
	return key, err
}
