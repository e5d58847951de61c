//go:build !linux

package agent

import (
	"context"
	"errors"

	"github.com/hearth-project/hearth/internal/agentapi"
)

func writeFile(context.Context, agentapi.WriteFileRequest) error {
	return errors.New("write_file: needs a Linux guest")
}
