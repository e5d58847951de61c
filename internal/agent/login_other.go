//go:build !linux

package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/hearth-project/hearth/internal/agentapi"
)

func runLogin(context.Context, agentapi.LoginRequest, func(agentapi.LoginProgress), *slog.Logger) (agentapi.LoginResult, error) {
	return agentapi.LoginResult{}, errors.New("login: needs a Linux guest")
}
