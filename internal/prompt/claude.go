package prompt

import (
	"encoding/json"
	"strings"
)

// claudeDecoder reads `claude -p --output-format stream-json --verbose`
// (docs/providers.md, "Prompts"): system/init, assistant and user
// messages holding API content blocks, and a closing result.
type claudeDecoder struct {
	sawResult bool
}

type claudeLine struct {
	Type      string         `json:"type"`
	Subtype   string         `json:"subtype"`
	SessionID string         `json:"session_id"`
	Model     string         `json:"model"`
	Message   *claudeMessage `json:"message"`

	// result
	IsError      bool         `json:"is_error"`
	Result       string       `json:"result"`
	DurationMS   int64        `json:"duration_ms"`
	NumTurns     int          `json:"num_turns"`
	TotalCostUSD *float64     `json:"total_cost_usd"`
	Usage        *claudeUsage `json:"usage"`
	Errors       []string     `json:"errors"`
}

type claudeMessage struct {
	// Content is a list of blocks, or (in a user message) a string.
	Content json.RawMessage `json:"content"`
}

type claudeBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
	// tool_use
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
	// tool_result
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
	IsError   bool            `json:"is_error"`
}

type claudeUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
}

func (d *claudeDecoder) done() bool { return d.sawResult }

func (d *claudeDecoder) decode(line []byte, emit func(Event)) bool {
	var l claudeLine
	if json.Unmarshal(line, &l) != nil {
		return false
	}
	switch l.Type {
	case "system":
		if l.Subtype == "init" {
			emit(Event{Type: TypeSession, SessionID: id(l.SessionID), Model: id(l.Model)})
		}
	case "assistant":
		for _, b := range blocks(l.Message) {
			switch b.Type {
			case "text":
				e := Event{Type: TypeAssistantText}
				e.setText(b.Text)
				emit(e)
			case "tool_use":
				e := Event{Type: TypeToolUse, ToolID: id(b.ID), ToolName: id(b.Name)}
				e.setInput(b.Input)
				emit(e)
			}
		}
	case "user":
		for _, b := range blocks(l.Message) {
			if b.Type == "tool_result" {
				e := Event{Type: TypeToolResult, ToolID: id(b.ToolUseID), IsError: b.IsError}
				e.setOutput(contentText(b.Content))
				emit(e)
			}
		}
	case "result":
		d.result(l, emit)
	case "stream_event", "rate_limit_event", "control_request", "control_response", "":
		// Not asked for (partial messages) or not about the run's content.
	}
	return l.Type != ""
}

func (d *claudeDecoder) result(l claudeLine, emit func(Event)) {
	if l.Usage != nil || l.TotalCostUSD != nil {
		u := &Usage{CostUSD: l.TotalCostUSD}
		if l.Usage != nil {
			u.InputTokens = l.Usage.InputTokens + l.Usage.CacheReadInputTokens + l.Usage.CacheCreationInputTokens
			u.OutputTokens = l.Usage.OutputTokens
			u.CachedInputTokens = l.Usage.CacheReadInputTokens
		}
		emit(Event{Type: TypeUsage, Usage: u})
	}
	if l.IsError {
		msg := strings.Join(l.Errors, "; ")
		if msg == "" {
			msg = l.Subtype
		}
		if msg == "" || msg == "success" {
			msg = l.Result
		}
		e := Event{Type: TypeError}
		e.setMessage(msg)
		emit(e)
	}
	e := Event{Type: TypeResult, IsError: l.IsError, DurationMS: max(l.DurationMS, 0), Turns: max(l.NumTurns, 0)}
	e.setText(l.Result)
	emit(e)
	d.sawResult = true
}

// blocks returns a message's content blocks (none for string content).
func blocks(m *claudeMessage) []claudeBlock {
	if m == nil || len(m.Content) == 0 || m.Content[0] != '[' {
		return nil
	}
	var bs []claudeBlock
	if json.Unmarshal(m.Content, &bs) != nil {
		return nil
	}
	if len(bs) > maxBlocks {
		bs = bs[:maxBlocks]
	}
	return bs
}

// contentText is a tool result's content as text: a string, or the text
// blocks of a list joined by newlines.
func contentText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var bs []claudeBlock
	if json.Unmarshal(raw, &bs) != nil {
		return ""
	}
	var texts []string
	size := 0
	for _, b := range bs {
		if b.Type == "text" && size <= MaxOutputBytes {
			texts = append(texts, b.Text)
			size += len(b.Text)
		}
	}
	return strings.Join(texts, "\n")
}
