package config

import "time"

// AgentConfig bounds what a guest agent may send the host (the guest is
// hostile). Rates are token buckets: a burst at once, then the rate per
// second; results answering the host's own requests are not counted, and
// the message rate always has room for twice vm.heartbeat_interval's.
type AgentConfig struct {
	MessagesPerSecond float64 `toml:"max_messages_per_second"`
	MessageBurst      int     `toml:"message_burst"`
	BytesPerSecond    float64 `toml:"max_bytes_per_second"`
	ByteBurst         int     `toml:"byte_burst"`
	// LineTimeout: a message must be complete this long after its first
	// byte.
	LineTimeout Duration `toml:"line_timeout"`
	// MaxViolations protocol violations within ViolationWindow fail the
	// VM, with the last one as the reason.
	MaxViolations   int      `toml:"max_violations"`
	ViolationWindow Duration `toml:"violation_window"`
}

func defaultAgent() AgentConfig {
	return AgentConfig{
		MessagesPerSecond: 10,
		MessageBurst:      400,
		BytesPerSecond:    64 << 10,
		ByteBurst:         1 << 20,
		LineTimeout:       Duration{10 * time.Second},
		MaxViolations:     3,
		ViolationWindow:   Duration{10 * time.Minute},
	}
}

// validate reports the agent section's problems through bad.
func (a AgentConfig) validate(bad func(field, format string, args ...any)) {
	if !(a.MessagesPerSecond > 0) {
		bad("agent.max_messages_per_second", "must be positive, got %v", a.MessagesPerSecond)
	}
	// An agent sends a port_ready per required port (at most 256), a
	// network_ready and a ready in one go while it boots.
	if a.MessageBurst < 258 {
		bad("agent.message_burst", "must be at least 258 (what an agent sends while it boots), got %d", a.MessageBurst)
	}
	if !(a.BytesPerSecond > 0) {
		bad("agent.max_bytes_per_second", "must be positive, got %v", a.BytesPerSecond)
	}
	if a.ByteBurst < 64<<10 {
		bad("agent.byte_burst", "must be at least 65536 (one login_progress message), got %d", a.ByteBurst)
	}
	if a.LineTimeout.Duration < time.Second {
		bad("agent.line_timeout", "must be at least 1s, got %s", a.LineTimeout.Duration)
	}
	if a.MaxViolations < 1 {
		bad("agent.max_violations", "must be at least 1, got %d", a.MaxViolations)
	}
	if a.ViolationWindow.Duration <= 0 {
		bad("agent.violation_window", "must be positive, got %s", a.ViolationWindow.Duration)
	}
}
