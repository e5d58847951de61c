// Package prompt runs the AI coding CLIs' prompts as data: BuildCommand
// turns a provider's prompt section (internal/provider) and a request
// into the argv, environment and standard input of one non-interactive
// run in a workspace VM, and a Parser per output format turns what the
// CLI prints on stdout into one vocabulary of Events (session,
// assistant_text, tool_use, tool_result, usage, result, error) whatever
// the CLI.
//
// The output comes from a guest and is untrusted: parsers take it in
// pieces as it arrives, bound every line and every field, skip what is
// not JSON, and never panic.
package prompt

import "encoding/json"

// Type is what an Event reports.
type Type string

// Event types.
const (
	// TypeSession: the CLI started (SessionID, Model when the CLI says).
	TypeSession Type = "session"
	// TypeAssistantText: text from the model (Text), a block or, with
	// Delta, a piece of one.
	TypeAssistantText Type = "assistant_text"
	// TypeToolUse: the model calls a tool (ToolID, ToolName, Input).
	TypeToolUse Type = "tool_use"
	// TypeToolResult: a tool's result (ToolID, Output, IsError).
	TypeToolResult Type = "tool_result"
	// TypeUsage: tokens used (Usage), cost if the CLI says.
	TypeUsage Type = "usage"
	// TypeResult: the run's outcome (Text, IsError, DurationMS, Turns);
	// the last event of a run that ended normally.
	TypeResult Type = "result"
	// TypeError: something went wrong (Message; Severity "warning" when
	// the CLI goes on).
	TypeError Type = "error"
)

// Event is one normalised event of a prompt run. Which fields are set
// depends on Type; the others are empty. Every string is valid UTF-8 and
// bounded (Truncated says when one was cut).
type Event struct {
	Type Type `json:"type"`

	SessionID string `json:"session_id,omitempty"`
	Model     string `json:"model,omitempty"`

	// Text is assistant text or a result's final text.
	Text  string `json:"text,omitempty"`
	Delta bool   `json:"delta,omitempty"`

	ToolID   string          `json:"tool_id,omitempty"`
	ToolName string          `json:"tool_name,omitempty"`
	Input    json.RawMessage `json:"input,omitempty"`
	Output   string          `json:"output,omitempty"`

	IsError bool `json:"is_error,omitempty"`

	Usage *Usage `json:"usage,omitempty"`

	DurationMS int64 `json:"duration_ms,omitempty"`
	Turns      int   `json:"turns,omitempty"`

	Message  string `json:"message,omitempty"`
	Severity string `json:"severity,omitempty"`

	// Truncated says a field was cut to its bound (or, for Input, left
	// out as too large).
	Truncated bool `json:"truncated,omitempty"`
}

// Usage is what a run used, as the CLI reports it.
type Usage struct {
	InputTokens       int64 `json:"input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
	CachedInputTokens int64 `json:"cached_input_tokens"`
	// CostUSD is the CLI's own estimate (nil when it gives none).
	CostUSD *float64 `json:"cost_usd,omitempty"`
}

// Bounds on what one event carries.
const (
	MaxLineBytes   = 1 << 20   // a stdout line longer than this is skipped
	MaxTextBytes   = 256 << 10 // assistant and result text
	MaxOutputBytes = 16 << 10  // a tool result's output
	MaxInputBytes  = 64 << 10  // a tool call's input JSON
	MaxIDBytes     = 256       // ids, names, models
	MaxMessageLen  = 4 << 10   // error messages
	// MaxStderrTail is how much of the stderr tail an error keeps.
	MaxStderrTail = 4 << 10
	// maxBlocks bounds the content blocks taken from one message.
	maxBlocks = 256
)
