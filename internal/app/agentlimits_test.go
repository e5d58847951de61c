package app

import (
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/vm"
)

// The [agent] defaults are the protocol's, and whatever the config accepts
// the protocol accepts too.
func TestAgentSectionMatchesTheProtocol(t *testing.T) {
	d := config.Default()
	if got, want := agentLimits(d.Agent), (agentapi.Limits{}).WithDefaults(); got != want {
		t.Fatalf("config defaults %+v, protocol defaults %+v", got, want)
	}
	if d.Agent.MaxViolations != vm.DefaultAgentMaxViolations || d.Agent.ViolationWindow.Duration != vm.DefaultAgentViolationWindow {
		t.Fatalf("violations: config %d in %s, vm %d in %s", d.Agent.MaxViolations, d.Agent.ViolationWindow.Duration,
			vm.DefaultAgentMaxViolations, vm.DefaultAgentViolationWindow)
	}
	lowest := d
	lowest.Agent = config.AgentConfig{MessagesPerSecond: 0.001, MessageBurst: 258, BytesPerSecond: 1, ByteBurst: 64 << 10,
		LineTimeout: config.Duration{Duration: time.Second}, MaxViolations: 1, ViolationWindow: config.Duration{Duration: time.Second}}
	if err := lowest.Validate(); err != nil {
		t.Fatalf("lowest limits the config takes: %v", err)
	}
	if err := agentLimits(lowest.Agent).Validate(); err != nil {
		t.Fatalf("the config takes limits the protocol refuses: %v", err)
	}
}
