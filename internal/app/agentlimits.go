package app

import (
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/config"
)

// agentLimits is the [agent] section as the protocol's limits.
func agentLimits(a config.AgentConfig) agentapi.Limits {
	return agentapi.Limits{
		MessageRate: a.MessagesPerSecond, MessageBurst: a.MessageBurst,
		ByteRate: a.BytesPerSecond, ByteBurst: a.ByteBurst,
		LineTimeout: a.LineTimeout.Duration,
	}
}
