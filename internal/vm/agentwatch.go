package vm

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// Reconnect pacing: the first retry comes after about minReconnect, each
// failed or short-lived session doubles the delay up to maxReconnect (at
// most a third of the heartbeat timeout, so a ready VM still gets a few
// tries), and a session that stayed up healthyAfter resets it.
const (
	minReconnect = 200 * time.Millisecond
	maxReconnect = 10 * time.Second
	healthyAfter = 30 * time.Second
	// logWindow is how often, at most, a repeated agent event is logged;
	// the rest are counted into one summary line.
	logWindow = time.Minute
)

// backoff is an exponential delay with jitter.
type backoff struct {
	min, max, cur time.Duration
}

// next returns the delay before the next attempt: the current step, from
// half of it to all of it, then doubles the step.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	}
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, b.max)
	return d
}

func (b *backoff) reset() { b.cur = 0 }

// logSampler logs the first of a repeated event in full and then, at most
// once per window, how many more there were.
type logSampler struct {
	log    *slog.Logger
	window time.Duration
	start  time.Time // of the current window; zero before the first event
	more   int       // events in the window after the first
	last   []any     // the attributes of the latest one
}

// note records an event at now; attrs describe it.
func (s *logSampler) note(now time.Time, level slog.Level, msg string, attrs ...any) {
	if !s.start.IsZero() && now.Sub(s.start) < s.window {
		s.more++
		s.last = attrs
		return
	}
	s.flush(level, msg)
	s.start = now
	s.log.Log(context.Background(), level, msg, attrs...)
}

// flush logs the summary of the current window, if it has one.
func (s *logSampler) flush(level slog.Level, msg string) {
	if s.more > 0 {
		s.log.Log(context.Background(), level, fmt.Sprintf("%s %d more times in the last %s", msg, s.more, s.window),
			append([]any{"times", s.more}, s.last...)...)
	}
	s.more, s.last = 0, nil
}

// violations counts an agent's protocol violations within a window.
type violations struct {
	window time.Duration
	at     []time.Time
}

// add records a violation at now and returns how many fall within the
// window.
func (v *violations) add(now time.Time) int {
	kept := v.at[:0]
	for _, t := range v.at {
		if now.Sub(t) < v.window {
			kept = append(kept, t)
		}
	}
	v.at = append(kept, now)
	return len(v.at)
}

// agentWatch is what a VM's supervisor keeps about its agent's
// connections: the reconnect delay, the sampled log lines, the
// violations.
type agentWatch struct {
	retry      backoff
	connected  logSampler
	ended      logSampler
	broke      violations
	maxBroken  int
	sessionsAt time.Time // when the current session started
}

func newAgentWatch(log *slog.Logger, cfg Config) *agentWatch {
	maxDelay := min(maxReconnect, cfg.HeartbeatTimeout/3)
	if maxDelay < minReconnect {
		maxDelay = minReconnect
	}
	maxBroken := cfg.AgentMaxViolations
	if maxBroken <= 0 {
		maxBroken = DefaultAgentMaxViolations
	}
	window := cfg.AgentViolationWindow
	if window <= 0 {
		window = DefaultAgentViolationWindow
	}
	return &agentWatch{
		retry:     backoff{min: minReconnect, max: maxDelay},
		connected: logSampler{log: log, window: logWindow},
		ended:     logSampler{log: log, window: logWindow},
		broke:     violations{window: window},
		maxBroken: maxBroken,
	}
}

// Defaults for Config.AgentMaxViolations and AgentViolationWindow.
const (
	DefaultAgentMaxViolations   = 3
	DefaultAgentViolationWindow = 10 * time.Minute
)

// onConnected notes a new session.
func (w *agentWatch) onConnected(now time.Time, version string) {
	w.sessionsAt = now
	w.connected.note(now, slog.LevelInfo, "agent connected", "agent_version", version)
}

// onEnded notes that a session ended (or a connection attempt failed)
// with err. It returns, if the agent has now broken the protocol too
// often, the VM's failure reason, and otherwise how long to wait before
// reconnecting.
func (w *agentWatch) onEnded(now time.Time, err error, wasSession bool) (failReason string, delay time.Duration) {
	if wasSession {
		if now.Sub(w.sessionsAt) >= healthyAfter {
			w.retry.reset()
		}
		w.ended.note(now, slog.LevelWarn, "agent session ended; reconnecting", "reason", errText(err))
	}
	if v, ok := agentapi.AsViolation(err); ok {
		if n := w.broke.add(now); n >= w.maxBroken {
			return fmt.Sprintf("guest agent broke protocol: %s (%d violations within %s)", v.Reason, n, w.broke.window), 0
		}
	}
	return "", w.retry.next()
}

// flush logs the summaries still pending.
func (w *agentWatch) flush() {
	w.connected.flush(slog.LevelInfo, "agent connected")
	w.ended.flush(slog.LevelWarn, "agent session ended; reconnecting")
}

func errText(err error) string {
	if err == nil {
		return "session closed"
	}
	return err.Error()
}
